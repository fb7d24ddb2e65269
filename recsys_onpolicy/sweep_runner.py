"""``recsys-onpolicy sweep``: a config's ``sweep`` section run as optuna studies.

Each trial is one run of the daily loop (the config's ``run``, seed ``seed``) with the regime's
learning rates set from the trial's ``lr``: the dense (Adam) rate is ``lr`` and the sparse
(fused row-wise Adagrad) rate keeps the model config's sparse/dense ratio, so one number moves
both. Gain and Drop are the run's last-day ``target/gain`` and ``probe/drop``. Trials write to
``OUT/trials/<regime>/trial=<n>``; pi_0 is computed once per seed and cached in ``OUT/cache``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from recsys_onpolicy.experiment import RecsysExperiment, RunTask, _run_task, regime_label
from recsys_onpolicy.regimes.config import resolve_regime
from recsys_onpolicy.sweep import open_storage, run_sweep, storage_url
from simulators.typed_config import ConfigError, validate

FINAL_METRICS = ("target/gain", "probe/drop", "probe/kl_to_base")


def last_values(frame: pl.DataFrame) -> tuple[dict[str, float], int]:
    """Last-step value of each of FINAL_METRICS (group ``train`` or null) and that step."""
    rows = frame.filter(pl.col("metric").is_in(FINAL_METRICS)
                        & (pl.col("group").is_null() | (pl.col("group") == "train")))
    step = int(rows["step"].max())
    last = rows.filter(pl.col("step") == step)
    return dict(zip(last["metric"].to_list(), last["value"].to_list())), step


def validate_sweep_experiment(data: dict, source: str = "",
                              storage: str | None = None) -> RecsysExperiment:
    """The validated experiment, or ConfigError unless it has a ``sweep`` and a removal, every
    swept regime is one of ``regimes`` or a preset, and the storage (``storage`` or
    ``sweep.storage``, when given) opens."""
    exp = validate(RecsysExperiment, data, source=source)
    if exp.sweep is None:
        raise ConfigError(f"{source}this config has no 'sweep' section: add one (see "
                          "configs/recsys/lr_sweep.yaml) or use 'recsys-onpolicy run'")
    if not exp.run.removal.cohorts:
        raise ConfigError(f"{source}a sweep measures Drop on a removed cohort: set "
                          "run.removal.cohort (and run.removal.from_day)")
    labels = {regime_label(s) for s in exp.regimes}
    for regime in exp.sweep.regimes:
        if regime not in labels:
            try:
                resolve_regime(regime)
            except ConfigError as err:
                raise ConfigError(f"{source}sweep.regimes: {regime!r} is neither a regime of "
                                  f"this config ({', '.join(sorted(labels))}) nor a preset: "
                                  f"{err}") from None
    if storage or exp.sweep.storage:
        open_storage(storage or exp.sweep.storage)
    return exp


def study_key(exp: RecsysExperiment) -> str:
    """A digest of what defines a trial (run config, regimes, learning-rate range, sampler seed,
    probes): a changed config names other studies, so it never reads this one's trials."""
    data = {"run": exp.run.model_dump(mode="json"), "regimes": exp.regimes,
            "probes": exp.probes.model_dump(mode="json"), "seed": exp.seed,
            "lr": [exp.sweep.lr_low, exp.sweep.lr_high, exp.sweep.sampler_seed]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def run_sweep_experiment(data: dict, out: Path, storage: str | None = None,
                         trials: int | None = None, progress: bool = True) -> pl.DataFrame:
    exp = validate_sweep_experiment(data)
    cfg = exp.sweep.model_copy(update={k: v for k, v in
                                       {"storage": storage, "trials": trials}.items() if v})
    base = exp.run.model_dump(mode="json")
    ratio = exp.run.model.sparse_lr / exp.run.model.dense_lr
    probes = exp.probes.model_dump(mode="json")

    def evaluate(regime: str, lr: float, trial: int):
        spec = next((s for s in exp.regimes if regime_label(s) == regime), regime)
        spec = dict(spec) if isinstance(spec, dict) else {"preset": spec}
        spec.pop("name", None)
        spec.update(dense_lr=lr, sparse_lr=min(lr * ratio, 10.0))
        task = RunTask(regime, exp.seed, False, dict(base, seed=exp.seed, regime=spec),
                       str(out / "trials" / regime / f"trial={trial}"))
        frame = _run_task(task, exp.experiment, probes, str(out / "cache"), 0, None)
        values, step = last_values(frame)
        if progress:
            print(f"  {regime} trial {trial}: lr={lr:.2e} gain={values.get('target/gain'):.4f} "
                  f"drop={values.get('probe/drop'):.4f}", flush=True)
        return values, step

    return run_sweep(cfg, storage_url(cfg, out), exp.experiment, evaluate, key=study_key(exp))
