"""An experiment: several regimes x seeds (x variants) of one recsys run, with paired controls.

The YAML files under ``configs/`` are experiments. A recsys experiment expands into runs of the
daily loop (:func:`recsys_onpolicy.loop.run`), one per (variant, regime, seed), plus for a
cohort-removal experiment one paired *control* run each: the same config and seed without the
removal (same pi_0, same world streams; ``removal.control``: the probes still split the users
into the removal run's ``train`` and ``heldout`` cohorts), so forgetting can be separated from
drift. Runs go to ``RUN_DIR/runs/<variant>/<regime>/seed=<s>[-control]`` and execute in parallel
processes (``jobs``, default: one per core, at most 2 on the 2-core machine); the overall
progress bar counts simulated days over all runs. Their metrics are concatenated into
``RUN_DIR/metrics.parquet`` with the forgetting rows (``probe/forgetting``,
``probe/forgetting_vs_control``, ``probe/drop_vs_control``) added; control runs carry
``experiment = <name>/control``.

LLM experiments (``domain: llm``) are dispatched to ``llm_reference`` (imported lazily, so the
dependency still points one way: llm_reference -> recsys_onpolicy).
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from recsys_onpolicy.overrides import apply_overrides
from recsys_onpolicy.probes.config import ProbeConfig
from recsys_onpolicy.probes.forgetting import forgetting_rows
from recsys_onpolicy.regimes.config import resolve_regime
from recsys_onpolicy.results import CONTROL_SUFFIX, to_frame
from recsys_onpolicy.run_config import RecsysRunConfig
from recsys_onpolicy.sweep import SweepConfig
from simulators.config import require_device
from simulators.typed_config import ConfigError, StrictModel, validate

# (domain, experiment kind) -> "module:function(data: dict, out: Path, progress: bool) -> frame"
LLM_RUNNERS = {
    "mixture_toy": "llm_reference.experiments:run_mixture_toy_experiment",
    "tiny_lm_recipe": "llm_reference.experiments:run_tiny_lm_experiment",
}


class RecsysExperiment(StrictModel):
    """A recsys experiment: the runs it expands into and how they are executed."""

    domain: Literal["recsys"] = "recsys"
    """Which side of the toolkit runs it (``recsys`` or ``llm``)."""
    experiment: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name written in every result row (letters, digits, ``_ . -``)."""
    description: str = ""
    """What the experiment shows (printed in the report)."""
    seeds: int = Field(default=1, ge=1, le=1000)
    """Independent repetitions per regime; intervals in the report are over seeds."""
    seed: int = Field(default=0, ge=0)
    """First seed; the runs use seed, seed + 1, ..., seed + seeds - 1."""
    regimes: list[str | dict[str, Any]] = Field(min_length=1)
    """Regimes to compare: preset names (``grpo``) or mappings with overrides and an optional
    ``name`` (``{name: grpo_b0.2, preset: grpo, beta: 0.2}``); names must be unique."""
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named variants of the run config, each a mapping of dotted keys under ``run`` to values
    (``{wide_head: {model.head_width: 512}}``); every regime runs in every variant. Empty = one
    variant, ``base``. Results name the regime ``<regime>@<variant>``."""
    control: bool = True
    """With a cohort removal, also run each (variant, regime, seed) without it (paired control)."""
    run: RecsysRunConfig = Field(default_factory=RecsysRunConfig)
    """The run every regime shares (world, model, days, removal, serving, warm-up)."""
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    """The daily probes."""
    sweep: SweepConfig | None = None
    """A learning-rate sweep (``recsys-onpolicy sweep``); None for experiments without one."""
    jobs: int | None = Field(default=None, ge=1, le=256)
    """Runs executed in parallel processes; None = one per CPU core (at most the number of runs)."""

    @field_validator("regimes")
    @classmethod
    def _regimes(cls, v: list) -> list:
        names = [regime_label(spec) for spec in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"regime names {dup} appear twice: give each entry a distinct 'name'")
        for spec in v:
            resolve_regime(_strip_name(spec))  # raises with the preset's / field's message
        return v

    @field_validator("run")
    @classmethod
    def _no_control_run(cls, v: RecsysRunConfig) -> RecsysRunConfig:
        if msg := user_control(v):
            raise ValueError(msg)
        return v


def user_control(cfg: RecsysRunConfig) -> str | None:
    """Why ``cfg`` cannot be an experiment's run (or a variant of it), or None: only the
    experiment marks its own paired controls (a user's ``removal.control`` would train on the
    "removed" cohort and still be read as a removal run)."""
    if not cfg.removal.control:
        return None
    return ("run.removal.control = true: the experiment marks its own paired controls; remove "
            "the key (the experiment's `control: true` adds a control run per removal run)")


def regime_label(spec: str | dict) -> str:
    if isinstance(spec, str):
        return spec
    return str(spec.get("name") or spec.get("preset") or "custom")


def _strip_name(spec: str | dict) -> str | dict:
    return {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else spec


@dataclass(frozen=True)
class RunTask:
    """One run of the daily loop inside an experiment."""

    label: str          # the regime column of its results
    seed: int
    control: bool
    config: dict        # RecsysRunConfig as plain data (picklable for the worker processes)
    out: str
    variant: str = "base"  # the variant it belongs to (its own removal settings)

    @property
    def experiment_suffix(self) -> str:
        return CONTROL_SUFFIX if self.control else ""


def expand(exp: RecsysExperiment, run_dir: Path) -> list[RunTask]:
    """The experiment's runs, ordered so that parallel workers start on different seeds."""
    base = exp.run.model_dump(mode="json")
    variants = exp.variants or {"base": {}}
    tasks = []
    for seed_i in range(exp.seeds):
        seed = exp.seed + seed_i
        for vname, overrides in variants.items():
            vdata = apply_overrides(base, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
            for spec in exp.regimes:
                label = regime_label(spec) + ("" if not exp.variants else f"@{vname}")
                data = dict(vdata, seed=seed, regime=_strip_name(spec))
                cfg = validate(RecsysRunConfig, data, source=f"variant {vname}, regime {label}: ")
                if msg := user_control(cfg):  # a variant may set it
                    raise ConfigError(f"variant {vname}, regime {label}: {msg}")
                where = run_dir / "runs" / vname / regime_label(spec)
                tasks.append(RunTask(label, seed, False, data, str(where / f"seed={seed}"),
                                     vname))
                if exp.control and cfg.removal.cohorts:
                    # the same cohorts held out by the probes, but still trained on
                    ctrl = dict(data, removal=cfg.removal.model_dump(mode="json") | {
                        "control": True})
                    tasks.append(RunTask(label, seed, True, ctrl,
                                         str(where / f"seed={seed}-control"), vname))
    return tasks


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _run_task(task: RunTask, experiment: str, probes: dict, cache_dir: str, threads: int,
              progress_queue) -> pl.DataFrame:
    """Worker: one run of the daily loop (also called in-process when jobs == 1)."""
    from recsys_onpolicy.loop import run
    from recsys_onpolicy.probes.daily import DailyProbes

    if threads:
        torch.set_num_threads(threads)
    daily = DailyProbes(validate(ProbeConfig, probes))

    def probe_fn(step, state):
        rows = daily(step, state)
        if progress_queue is not None and step > 0:
            progress_queue.put(1)
        return rows

    cfg = validate(RecsysRunConfig, task.config)
    return run(cfg, task.out, probe_fn=probe_fn, progress=False,
               experiment=experiment + task.experiment_suffix, regime_name=task.label,
               cache_dir=cache_dir)


def run_recsys_experiment(exp: RecsysExperiment, run_dir: Path, progress: bool = True,
                          jobs: int | None = None) -> pl.DataFrame:
    """Run (or resume) every run of the experiment; returns all metrics with forgetting rows.
    Under torchrun (several ranks) the runs go one after another, each over all ranks."""
    tasks = expand(exp, run_dir)
    jobs = min(jobs or exp.jobs or os.cpu_count() or 1, len(tasks))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        jobs = 1  # every rank takes part in every run: no worker processes
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cache = str(run_dir / "cache")
    probes = exp.probes.model_dump(mode="json")
    total = len(tasks) * exp.run.days
    bar = tqdm(total=total, desc=f"{exp.experiment}: {len(tasks)} runs", unit="day",
               disable=not progress)
    if jobs == 1:
        q = _BarQueue(bar)
        frames = [_run_task(t, exp.experiment, probes, cache, 0, q) for t in tasks]
    else:
        frames = _run_parallel(tasks, exp.experiment, probes, cache, threads, jobs, bar)
    bar.close()
    return with_forgetting(exp, frames, tasks)


class _BarQueue:
    """In-process stand-in for the progress queue."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, n):
        self.bar.update(n)


def _run_parallel(tasks, experiment, probes, cache, threads, jobs, bar) -> list[pl.DataFrame]:
    ctx = mp.get_context("spawn")  # torch + gloo process groups do not survive fork
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_task, t, experiment, probes, cache, threads, q)
                       for t in tasks]
            while not all(f.done() for f in futures):
                try:
                    bar.update(q.get(timeout=0.5))
                except queue.Empty:
                    pass
            while not q.empty():
                bar.update(q.get())
            return [f.result() for f in futures]  # re-raises a worker's error


def with_forgetting(exp: RecsysExperiment, frames: list[pl.DataFrame],
                    tasks: list[RunTask]) -> pl.DataFrame:
    """All runs' rows plus ``probe/forgetting`` (and ``..._vs_control``) for removed cohorts,
    each variant measured against its own removal (a variant may move ``removal.from_day``)."""
    everything = pl.concat(frames) if frames else to_frame([])
    extra = []
    for variant in dict.fromkeys(t.variant for t in tasks):
        mine = [(f, t) for f, t in zip(frames, tasks) if t.variant == variant]
        runs = [f for f, t in mine if not t.control]
        controls = [f for f, t in mine if t.control]
        removal = validate(RecsysRunConfig, next(t for _, t in mine if not t.control).config
                           ).removal
        if removal.cohorts and runs:
            extra.append(forgetting_rows(pl.concat(runs), removal.from_day, removal.cohorts,
                                         control=pl.concat(controls) if controls else None))
    return pl.concat([everything, *extra]) if extra else everything


# --- loading ---------------------------------------------------------------------------------

def load_experiment_data(path: str | Path, overrides: list[str] = (), seeds: int | None = None
                         ) -> dict:
    """The YAML mapping of an experiment with ``--set`` overrides (and ``--seeds``) applied."""
    from simulators.typed_config import read_yaml

    data = apply_overrides(read_yaml(path), list(overrides))
    if seeds is not None:
        data["seeds"] = seeds
    if data.get("domain", "recsys") not in ("recsys", "llm"):
        raise ConfigError(f"{path}: domain = {data.get('domain')!r}: use 'recsys' or 'llm'")
    if data.get("domain") == "llm" and data.get("experiment") not in LLM_RUNNERS:
        raise ConfigError(f"{path}: experiment = {data.get('experiment')!r}: an llm experiment is "
                          f"one of {sorted(LLM_RUNNERS)}")
    return data


def check_tables(tasks: list[RunTask], world_size: int, local_world_size: int,
                 source: str = "") -> None:
    """ConfigError (a :class:`ShardingPlanError`) when the tables of a run cannot be placed on
    ``world_size`` processes (``local_world_size`` per machine) in ``run.model.sharding``'s
    memory with its allowed types: the planner's dry run, once per distinct model and table
    size, before any folder is touched."""
    from recsys_onpolicy.model import check_plan
    from recsys_onpolicy.regimes.base_policy import table_ids
    from recsys_onpolicy.sharding import ShardingPlanError

    seen = set()
    for task in tasks:
        cfg = RecsysRunConfig.model_validate(task.config)
        ids = table_ids(cfg)
        key = (cfg.model.model_dump_json(), ids)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_plan(cfg.model, *ids, world_size, local_world_size)
        except ShardingPlanError as err:
            regime = task.label.split("@")[0]  # the label carries "@variant" when there are some
            where = f"variant {task.variant}, " if task.variant != "base" else ""
            raise ShardingPlanError(f"{source}{where}regime {regime}: {err}") from None


def validate_experiment(data: dict, source: str = "",
                        processes: tuple[int, int] | None = None) -> RecsysExperiment | dict:
    """A validated recsys experiment, or (for llm) the data after the llm side's validation.

    With ``processes`` = (in all, per machine) that the runs will use, the embedding tables of
    every variant x regime are also planned for them (:func:`check_tables`)."""
    if data.get("domain", "recsys") == "recsys":
        exp = validate(RecsysExperiment, data, source=source)
        tasks = expand(exp, Path("."))  # every variant x regime validates before any folder
        require_device("run.model.device", exp.run.model.device, source)
        require_device("run.world.device", exp.run.world.device, source)
        if processes is not None:
            check_tables(tasks, *processes, source=source)
        return exp
    module, _ = LLM_RUNNERS[data["experiment"]].split(":")
    importlib.import_module(module).validate_experiment(data, source)
    return data


def run_experiment(data: dict, run_dir: Path, progress: bool = True,
                   jobs: int | None = None) -> pl.DataFrame:
    """Run an experiment (either domain) into ``run_dir``; returns its metrics."""
    exp = validate_experiment(data)
    if isinstance(exp, RecsysExperiment):
        return run_recsys_experiment(exp, run_dir, progress=progress, jobs=jobs)
    module, fn = LLM_RUNNERS[data["experiment"]].split(":")
    return getattr(importlib.import_module(module), fn)(data, run_dir, progress)
