"""The daily loop of one run: serve -> simulate -> log -> train -> probe -> checkpoint.

Read top to bottom: :func:`run` is the whole story.

- **Before day 0.** pi_0 comes from :func:`recsys_onpolicy.regimes.base_policy.base_policy`
  (warm-up on uniform-random logs, shared by every regime with the same seed). The policy
  starts as a copy of pi_0 (weights and optimizer states; the regime's learning-rate overrides
  replace the learning rates), a frozen copy is the KL reference, and metric step 0 is probed.
- **Each day d = 0 .. days-1.** The world simulates the day's requests, served in batches by
  the Plackett-Luce policy over the current scores at the serving temperature (the logged
  propensities are the real ones). With ``cadence: daily`` the regime then trains on the day's
  requests; with ``cadence: streaming`` it trains after every served batch, so the next batch
  is served by the updated policy. From ``removal.from_day`` on, requests of the removed
  cohorts are dropped from training (they are still served, simulated and probed). The day's
  impressions go to ``logs/`` (Parquet; its ``day`` column is the world's day, which counts the
  warm-up days too), metric step d + 1 is recorded, and the whole state is checkpointed.
- **Resume.** The checkpoint is written atomically at the end of every day (and after step 0)
  with the policy (tables, fused and dense optimizer states), the companion learner, the
  world, every generator and the metrics so far. :func:`run` on a folder holding one continues
  after the last completed day; on CPU the result is bit-identical to an uninterrupted run.
  The file is written from a snapshot on a worker thread while the next day runs
  (:class:`~recsys_onpolicy.background.BackgroundWriter`); :func:`run` returns once it is on
  disk. A run killed meanwhile resumes from the previous day's checkpoint.

Files in ``out_dir``: ``metrics.parquet`` (long schema, :mod:`recsys_onpolicy.results`),
``logs/day=NNNN/part-0.parquet``, ``checkpoint.pt`` (and ``checkpoints/day=NNNN.pt`` with
``checkpoint.keep_daily``), and ``base_policy.pt`` (pi_0 and the post-warm-up world, needed to
resume) unless a shared ``cache_dir`` holds pi_0.

Metrics: the loop itself writes ``train/loss`` and ``train/reward`` (means over the day's
updates / training slates); ``probe_fn(step, state) -> rows`` adds the rest. The default,
:func:`expected_clicks_probe`, writes ``target/expected_clicks`` for the ``train`` and
``heldout`` groups.

Several processes (``torchrun``, ``recsys-onpolicy run --nproc N``): every rank runs this same
loop on the same world; each rank serves and simulates its own users' requests (a
:class:`~simulators.shard.UserShard` passed to ``simulate_day``, with the serving stream split
per rank every day) and every rank then holds the whole day's log, on which all ranks train
together with the model's work split (see :mod:`recsys_onpolicy.distributed`). Rank 0 alone
touches files: it writes the run folder (the same files as one process; checkpoints hold whole
tables) and reads pi_0 and checkpoints back, broadcasting them to the other ranks, which write
nothing. pi_0's warm-up is not split (its logs are uniform-random), so every N starts from the
same pi_0.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
from tqdm.auto import tqdm

from recsys_onpolicy.background import BackgroundWriter
from recsys_onpolicy.distributed import (
    ensure_process_group,
    from_main,
    is_main,
    under_torchrun,
    user_shard,
    world_size,
)
from recsys_onpolicy.model import ModelConfig, Scorer, TrainableScorer, build_scorer
from recsys_onpolicy.model import resolve_device as model_device
from recsys_onpolicy.regimes import TrainContext, TrainStats, train_on
from recsys_onpolicy.regimes.base_policy import (
    BasePolicy,
    base_key,
    base_policy,
    new_scorer,
    table_ids,
)
from recsys_onpolicy.regimes.config import RegimeConfig
from recsys_onpolicy.results import metric_rows, to_frame, write_metrics
from recsys_onpolicy.run_config import RecsysRunConfig
from recsys_onpolicy.run_dir import differing_keys
from recsys_onpolicy.run_state import (
    generator_states,
    load_state,
    restore_generators,
    restore_world,
    save_atomic,
    stream_generator,
    to_cpu,
    world_state,
)
from recsys_onpolicy.slate_policy import sample_slates, slate_log_prob
from simulators import ground_truth
from simulators.candidates import build_index
from simulators.config import resolve_device
from simulators.day import DayLog, Requests, make_requests, simulate_day
from simulators.logs import day_log_to_frame, write_day
from simulators.typed_config import ConfigError
from simulators.world import World

CHECKPOINT_FORMAT = 1
DOMAIN = "recsys"


@dataclass
class RunState:
    """Everything a run holds between days; what ``probe_fn`` sees.

    Attributes:
        config: the run's config; ``experiment``, ``regime_name``: labels of its metric rows.
        world: the simulator state; ``policy``: the model being trained; ``reference``: the
            frozen pi_0; ``companion``: the RL learner of ``data: traces`` (else None).
        gens: the run's generators (``world``, ``serve``, ``train``).
        day: completed experiment days (= the metric step of the current model).
        log: the last simulated day's log (None before day 0); ``stats``: its training stats.
        rows: the metric rows so far (long schema).
        probe_state: the probes' own state (plain tensors and containers, e.g. a fixed probe
            set drawn at step 0); saved in the checkpoint and restored on resume.
    """

    config: RecsysRunConfig
    experiment: str
    regime_name: str
    world: World
    policy: TrainableScorer
    reference: Scorer
    companion: TrainableScorer | None
    gens: dict[str, torch.Generator]
    day: int = 0
    log: DayLog | None = None
    stats: dict[str, float] | None = None
    rows: list[dict] = field(default_factory=list)
    probe_state: dict = field(default_factory=dict)

    def groups(self) -> dict[str, list[int]]:
        """Cohorts of the probe groups: ``train`` (never removed) and ``heldout`` (removed from
        ``removal.from_day`` on; absent without removal). A paired control (``removal.control``)
        has the same groups as its removal run, though it trains on every cohort."""
        removed = self.config.removal.cohorts
        out = {"train": [c for c in range(self.world.n_cohorts) if c not in removed]}
        if removed:
            out["heldout"] = list(removed)
        return out

    def rows_for(self, step: int, values: dict[str, float], group: str | None = None) -> list[dict]:
        """Metric rows of this run at ``step`` (NaN values are left out)."""
        values = {k: v for k, v in values.items() if not math.isnan(v)}
        return metric_rows(domain=DOMAIN, experiment=self.experiment, regime=self.regime_name,
                           seed=self.config.seed, step=step, values=values, group=group)


ProbeFn = Callable[[int, RunState], list[dict]]


# ---- serving -------------------------------------------------------------------------------

def serving_policy(model, world: World, temperature: float, gen: torch.Generator,
                   local: bool = False):
    """The served policy: one Plackett-Luce slate per request over the model's scores at
    ``temperature``, with its exact log-probability as the logged propensity. ``local``: each
    rank serves its own requests (:mod:`simulators.shard`; ``TrainableScorer.score``)."""
    k = world.cfg.slate_size

    def policy(requests: Requests) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            scores = model.score_requests(requests, local=local).to(world.device)  # (B, C)
            slates = sample_slates(scores, k, gen, temperature)  # (B, K)
            return slates, slate_log_prob(scores, slates, temperature)  # (B, K), (B,)

    return policy


# ---- the default probe ---------------------------------------------------------------------

def probe_requests(state: RunState, cohorts: list[int], gen: torch.Generator) -> Requests:
    """Up to ``config.probe_requests`` requests of active users of ``cohorts``, with fresh
    candidates; the world is not changed."""
    world = state.world
    wanted = torch.tensor(cohorts, device=world.device)
    pool = torch.nonzero(world.users.active & torch.isin(world.users.cohort, wanted)).squeeze(1)
    users = pool[torch.randperm(pool.shape[0], generator=gen, device=world.device)]
    users = users[: state.config.probe_requests]
    return make_requests(world, users, gen, index=build_index(world, gen))


def expected_clicks(world: World, requests: Requests, slates: torch.Tensor) -> torch.Tensor:
    """Expected clicks (B,) under the ground truth of slates (B, K) (positions)."""
    items = requests.candidates.gather(1, slates)  # (B, K)
    return ground_truth.expected_clicks(world, requests.users, items)


def expected_clicks_probe(step: int, state: RunState) -> list[dict]:
    """``target/expected_clicks`` per group: mean expected clicks (ground truth) of one slate
    sampled from the served policy for each probe request. The probe generator restarts from
    the same seed at every step (common random numbers across steps and regimes)."""
    cfg, world = state.config, state.world
    gen = stream_generator(cfg.seed, "probe", world.device)
    rows = []
    for group, cohorts in state.groups().items():
        requests = probe_requests(state, cohorts, gen)
        if len(requests) == 0:
            continue
        slates, _ = serving_policy(state.policy, world, cfg.serving_temperature, gen)(requests)
        value = float(expected_clicks(world, requests, slates).mean())
        rows += state.rows_for(step, {"target/expected_clicks": value}, group)
    return rows


# ---- building the state --------------------------------------------------------------------

def regime_model_config(model: ModelConfig, regime: RegimeConfig) -> ModelConfig:
    """The model config with the regime's learning-rate overrides applied."""
    update = {k: getattr(regime, k) for k in ("dense_lr", "sparse_lr") if getattr(regime, k)}
    return model.model_copy(update=update)


def load_scorer(cfg: RecsysRunConfig, model_cfg: ModelConfig, state: dict) -> TrainableScorer:
    """A :class:`TrainableScorer` holding ``state`` (weights and optimizer states), trained at
    ``model_cfg``'s learning rates (a saved Adam state would otherwise bring its own)."""
    scorer = new_scorer(model_cfg, cfg)
    # A copy: torch's Optimizer.load_state_dict keeps the given Adam moment tensors as its live
    # state, so training would otherwise write into ``state`` (e.g. the cached pi_0).
    scorer.load_state_dict(to_cpu(state))
    for group in scorer.dense_optimizer.param_groups:
        group["lr"] = model_cfg.dense_lr
    return scorer


def frozen_reference(cfg: RecsysRunConfig, base: BasePolicy) -> Scorer:
    """The frozen pi_0: a plain, no-grad scorer holding the base policy's weights."""
    scorer = build_scorer(cfg.model, *table_ids(cfg), torch.Generator().manual_seed(0))
    scorer.load_state_dict(base.model["model"])
    return scorer.requires_grad_(False).eval()


def build_state(cfg: RecsysRunConfig, base: BasePolicy, experiment: str,
                regime_name: str) -> RunState:
    """Day-0 state: the post-warm-up world, the policy (and companion) as copies of pi_0."""
    device = resolve_device(cfg.world.device)
    world = restore_world(base.world, cfg.world, device)
    gens = {"world": stream_generator(cfg.seed, "world", device),
            "serve": stream_generator(cfg.seed, "serve", device),
            "train": stream_generator(cfg.seed, "train", device)}
    gens["world"].set_state(base.world_gen)
    policy = load_scorer(cfg, regime_model_config(cfg.model, cfg.regime), base.model)
    companion = None
    if cfg.regime.data == "traces":
        comp_regime = cfg.regime.companion()
        companion = load_scorer(cfg, regime_model_config(cfg.model, comp_regime), base.model)
    return RunState(cfg, experiment, regime_name, world, policy, frozen_reference(cfg, base),
                    companion, gens)


def train_context(state: RunState) -> TrainContext:
    """A fresh training context (zeroed stats) for the day."""
    cfg, regime = state.config, state.config.regime
    temperature = regime.temperature or cfg.serving_temperature
    companion = None
    if state.companion is not None:
        comp_regime = regime.companion()
        companion = TrainContext(comp_regime, state.companion, state.reference, state.world,
                                 state.gens["train"], comp_regime.temperature or temperature,
                                 cfg.train_batch_size)
    return TrainContext(regime, state.policy, state.reference, state.world, state.gens["train"],
                        temperature, cfg.train_batch_size, companion, TrainStats())


# ---- checkpoints ---------------------------------------------------------------------------

def checkpoint_dict(state: RunState) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "config": state.config.model_dump_json(), "day": state.day,
        "experiment": state.experiment, "regime_name": state.regime_name,
        "policy": to_cpu(state.policy.state_dict()),
        "companion": None if state.companion is None else to_cpu(state.companion.state_dict()),
        "world": world_state(state.world), "gens": generator_states(state.gens),
        "rows": list(state.rows), "probe_state": to_cpu(state.probe_state),
    }


def save_checkpoint(state: RunState, out: Path, writer: BackgroundWriter) -> None:
    """Snapshot the state and have ``writer`` write ``checkpoint.pt`` atomically (and a
    per-day copy with ``keep_daily``) while the caller goes on; with several ranks every rank
    must call it (the tables are gathered) and rank 0 writes."""
    if not state.config.checkpoint.enabled:
        return
    payload = checkpoint_dict(state)  # copies: the live state goes on changing
    if not is_main():
        return
    daily = None
    if state.config.checkpoint.keep_daily:
        daily = out / "checkpoints" / f"day={state.day:04d}.pt"

    def write() -> None:
        path = save_atomic(payload, out / "checkpoint.pt")
        if daily is not None:
            daily.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, daily)

    writer.submit(write)


def same_config(saved_json: str, cfg: RecsysRunConfig) -> bool:
    """Whether a checkpoint's config (JSON) is ``cfg``. The saved one is read through the
    current model first, so a field added since with its default (e.g. ``removal.control``)
    does not make an older checkpoint another config."""
    if saved_json == cfg.model_dump_json():
        return True
    try:
        return RecsysRunConfig.model_validate_json(saved_json).model_dump_json() == (
            cfg.model_dump_json())
    except ValueError:  # a field since removed or renamed: another config
        return False


def restore_checkpoint(state: RunState, saved: dict) -> None:
    """Load a checkpoint into a state built by :func:`build_state` for the same config."""
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint format {saved.get('format')} is not {CHECKPOINT_FORMAT}: "
                          "start a new run folder")
    if not same_config(saved["config"], state.config):
        diff = differing_keys(json.loads(saved["config"]), state.config.model_dump(mode="json"))
        raise ConfigError(f"the checkpoint in this folder was made with another config (at "
                          f"{', '.join(diff[:5]) or 'its serialised form'}): resume with the same "
                          "config, or use a new output folder")
    cfg = state.config
    state.world = restore_world(saved["world"], cfg.world, state.world.device)
    state.policy.load_state_dict(saved["policy"])
    if state.companion is not None:
        state.companion.load_state_dict(saved["companion"])
    restore_generators(state.gens, saved["gens"])
    state.day, state.rows = int(saved["day"]), list(saved["rows"])
    state.probe_state = dict(saved["probe_state"])


# ---- the day -------------------------------------------------------------------------------

def training_requests(log: DayLog, removed: torch.Tensor | None) -> DayLog:
    """The log without the removed cohorts' requests (all of it when ``removed`` is None)."""
    if removed is None or len(log) == 0:
        return log
    return log.select(~torch.isin(log.cohort, removed))


def run_day(state: RunState, out: Path) -> None:
    """Serve, simulate, log and train one day (in place); ``state.day`` advances by one."""
    cfg, day = state.config, state.day
    removed = None
    if cohorts := cfg.removal.removed_on(day):
        removed = torch.tensor(cohorts, device=state.world.device)
    ctx = train_context(state)
    shard = user_shard()  # None in one process
    serve_gen = state.gens["serve"] if shard is None else shard.fork(state.gens["serve"])
    serve = serving_policy(state.policy, state.world, cfg.serving_temperature, serve_gen,
                           local=shard is not None)
    streaming = cfg.regime.cadence == "streaming"

    def on_batch(batch: DayLog) -> None:
        train_on(ctx, training_requests(batch, removed))

    log = simulate_day(state.world, serve, state.gens["world"], cfg.serve_batch_size,
                       on_batch if streaming else None, shard=shard)
    if cfg.write_logs and len(log) and is_main():
        write_day(day_log_to_frame(log), out / "logs")
    if not streaming:
        train_on(ctx, training_requests(log, removed))
    state.log, state.stats, state.day = log, ctx.stats.means(), day + 1


def shared_base_policy(config: RecsysRunConfig, cache_dir: str | Path | None) -> BasePolicy:
    """:func:`~recsys_onpolicy.regimes.base_policy.base_policy`; with several ranks its cache
    file is read and written by rank 0 only (the warm-up itself runs on every rank)."""
    if world_size() == 1 or cache_dir is None:
        return base_policy(config, cache_dir)
    path = Path(cache_dir) / f"pi0-{base_key(config)}.pt"  # base_policy's cache file
    saved = from_main(lambda: load_state(path) if path.is_file() else None)
    if saved is not None:
        return BasePolicy.from_dict(saved)
    base = base_policy(config, None)
    if is_main():
        save_atomic(base.to_dict(), path)
    return base


def load_base(config: RecsysRunConfig, cache_dir: str | Path | None,
              own_copy: Path | None) -> BasePolicy:
    """pi_0 for a run: the run's own copy when it has one made for this config (a resume),
    else :func:`shared_base_policy`, then saved as the run's own copy (``own_copy``, if given;
    a copy left by another config, e.g. a run killed before its first checkpoint, is
    replaced)."""
    if own_copy is not None:
        saved = from_main(lambda: load_state(own_copy) if own_copy.is_file() else None)
        if saved is not None and saved.get("key") == base_key(config):
            return BasePolicy.from_dict(saved)
    base = shared_base_policy(config, cache_dir)
    if own_copy is not None and is_main():
        save_atomic(base.to_dict(), own_copy)
    return base


def run(
    config: RecsysRunConfig,
    out_dir: str | Path,
    *,
    probe_fn: ProbeFn | None = None,
    progress: bool = True,
    experiment: str = "run",
    regime_name: str | None = None,
    cache_dir: str | Path | None = None,
    stop_after: int | None = None,
) -> pl.DataFrame:
    """Run (or resume) one run in ``out_dir``; returns its metrics (long schema).

    Args:
        config: the run.
        out_dir: its folder; if it holds a checkpoint of the same config, the run continues
            after the last completed day.
        probe_fn: ``probe_fn(step, state) -> rows`` called at step 0 and after every day;
            default :func:`expected_clicks_probe`.
        progress: show a tqdm bar over days.
        experiment, regime_name: labels of the metric rows (regime_name defaults to the
            regime's preset name, or 'custom').
        cache_dir: where pi_0 is cached across runs (see ``base_policy``); None = memory only.
        stop_after: stop once this many days are complete (as if the process were killed
            right after that day's checkpoint); None = run all ``config.days``.
    """
    out = Path(out_dir)
    if under_torchrun():  # join the ranks before anything asks which rank this is
        ensure_process_group(model_device(config.model.device))
    main = is_main()  # with several ranks only rank 0 touches files (module docstring)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    probe = probe_fn or expected_clicks_probe
    name = regime_name or config.regime.name
    # pi_0 for a resume: from the shared cache, or from the run's own copy when there is none.
    own_copy = out / "base_policy.pt" if cache_dir is None and config.checkpoint.enabled else None
    base = load_base(config, cache_dir, own_copy)
    state = build_state(config, base, experiment, name)
    ckpt = out / "checkpoint.pt"
    saved = from_main(lambda: load_state(ckpt) if config.checkpoint.enabled and ckpt.is_file()
                      else None)
    last = config.days if stop_after is None else min(config.days, stop_after)
    bar = tqdm(total=config.days, initial=state.day, desc=f"{name} seed {config.seed}",
               unit="day", disable=not (progress and main), leave=False)
    with BackgroundWriter() as writer:  # waits for the last checkpoint on the way out
        if saved is not None:
            restore_checkpoint(state, saved)
        else:
            state.rows = probe(0, state)
            save_checkpoint(state, out, writer)
            if main:
                write_metrics(to_frame(state.rows), out / "metrics.parquet")
        while state.day < last:
            run_day(state, out)
            step = state.day
            train = {"train/loss": state.stats["loss"], "train/reward": state.stats["reward"]}
            state.rows += state.rows_for(step, train) + probe(step, state)
            if main:
                write_metrics(to_frame(state.rows), out / "metrics.parquet")
            save_checkpoint(state, out, writer)
            bar.update(1)
            bar.set_postfix(reward=f"{state.stats['reward']:.3f}",
                            loss=f"{state.stats['loss']:.3f}")
    bar.close()
    return to_frame(state.rows)
