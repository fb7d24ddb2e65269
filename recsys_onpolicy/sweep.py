"""Learning-rate sweeps with optuna: the Gain/Drop trade-off frontier per regime.

One optuna study per (experiment, regime), two objectives: maximise Gain, minimise Drop
(NSGA-II for >1 objective is overkill at these budgets, so trials sample the learning rate
log-uniformly with a seeded TPE sampler and the frontier is read off afterwards). Studies live
in optuna's RDB storage: SQLite in the run directory by default (``sqlite:///RUN_DIR/sweep.db``),
or any URL given with ``--storage`` (e.g. ``postgresql://host/db``, with its database driver
installed) so several machines can work on one study: each process asks for trials until the
study holds ``trials`` of them. A study is named by experiment, regime and a digest of everything
that defines a trial (the run config, the learning-rate range, the probes), so a changed config
starts a new study instead of reading another one's trials. Interrupted sweeps resume: finished
trials are kept; a process that is stopped marks its running trial failed, and a trial whose
process died without a word (no heartbeat for ``GRACE_S`` seconds) is failed by the next
process that joins, never a trial that another live process is running.

The sweep writes its results in the long schema: ``experiment`` = the config's, ``regime`` =
preset, ``seed`` = trial number, ``step`` = final step, metrics ``sweep/lr``, ``target/gain``,
``probe/drop``.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Self

import optuna
import polars as pl
from pydantic import Field, model_validator
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from recsys_onpolicy.results import metric_rows, to_frame
from simulators.typed_config import ConfigError, StrictModel

# evaluate(regime, lr, trial_number) -> {"target/gain": g, "probe/drop": d, ...}, final step
Evaluate = Callable[[str, float, int], tuple[dict[str, float], int]]
HEARTBEAT_S = 30
"""A running trial records a heartbeat this often (seconds)."""
GRACE_S = 300
"""A RUNNING trial without a heartbeat for this long belongs to a dead process and is failed."""


class SweepConfig(StrictModel):
    regimes: list[str] = Field(default_factory=lambda: ["supervised_daily", "grpo"], min_length=1)
    """Regime presets to sweep; one optuna study each."""
    trials: int = Field(8, ge=1, le=10_000)
    """Trials per regime (total across all processes sharing the storage)."""
    lr_low: float = Field(1e-4, gt=0, allow_inf_nan=False)
    """Lowest learning rate tried (log-uniform between lr_low and lr_high)."""
    lr_high: float = Field(1e-1, gt=0, allow_inf_nan=False)
    """Highest learning rate tried."""
    storage: str | None = None
    """Optuna RDB storage URL; None = sqlite:///<run dir>/sweep.db."""
    sampler_seed: int = 0
    """Seed of optuna's TPE sampler; each trial's proposal is seeded by (this, its trial
    number): the same config proposes the same learning rates, and a resumed or shared study
    does not propose again the ones it already tried."""

    @model_validator(mode="after")
    def _check_range(self) -> SweepConfig:
        if self.lr_low >= self.lr_high:
            raise ValueError(
                f"lr_low ({self.lr_low}) must be below lr_high ({self.lr_high}): swap or widen them"
            )
        return self


def storage_url(cfg: SweepConfig, run_dir) -> str:
    """``cfg.storage``, or SQLite in the run directory (any character in its path is safe)."""
    if cfg.storage:
        return cfg.storage
    db = Path(run_dir).absolute() / "sweep.db"
    return URL.create("sqlite", database=db.as_posix()).render_as_string(hide_password=False)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` with heartbeats on; a bad URL, a missing database driver or an
    unreachable database raises ConfigError (before anything is run)."""
    try:
        with _quiet():
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
    except ImportError as err:
        raise ConfigError(f"sweep storage {url!r}: its database driver is not installed "
                          f"({err}); install it (e.g. pip install psycopg2-binary for "
                          "postgresql://) or use a sqlite:/// URL") from None
    except (SQLAlchemyError, ValueError, OSError) as err:  # bad URL, unreachable database
        raise ConfigError(f"sweep storage {url!r} cannot be opened ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); give a URL such as "
                          "sqlite:////abs/path/sweep.db or postgresql://user@host/db") from None


def trial_sampler(sampler_seed: int, trial_number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler that proposes trial ``trial_number``: seeded by (sampler_seed, the trial
    number), so proposals depend on the study's history and the trial, never on which process
    asks (reproducible for a given history; a resumed or shared study gets new proposals)."""
    return optuna.samplers.TPESampler(seed=(sampler_seed * 1_000_003 + trial_number) % 2**32)


def _study(cfg: SweepConfig, storage, experiment: str, regime: str, key: str) -> optuna.Study:
    return optuna.create_study(
        study_name=f"{experiment}/{regime}" + (f"@{key}" if key else ""),
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=trial_sampler(cfg.sampler_seed, 0),
        load_if_exists=True,
    )


def _finished(study) -> int:
    """Trials of ``study`` that completed."""
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@contextlib.contextmanager
def _quiet():
    """Heartbeats are optuna-experimental and meant for ``Study.optimize``; this module drives
    them itself with ask/tell (:class:`_Heartbeat`), so those warnings are noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield


class _Heartbeat:
    """Records a trial's heartbeat every HEARTBEAT_S seconds while the trial runs."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_sweep(cfg: SweepConfig, url: str, experiment: str, evaluate: Evaluate,
              key: str = "") -> pl.DataFrame:
    """Run (or continue) the studies until each holds ``cfg.trials`` finished trials.

    ``key`` (e.g. a digest of the run config) is part of the study names: studies with other
    keys in the same storage are not read."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    rows = []
    for regime in cfg.regimes:
        study = _study(cfg, storage, experiment, regime, key)
        with _quiet():
            optuna.storages.fail_stale_trials(study)  # only trials of dead processes
        while _finished(study) < cfg.trials:
            with _quiet():
                trial = study.ask()
            # The proposal's randomness is seeded by the trial's number (unique in the study):
            # one sampler seed per process would make a resumed sweep, or two machines sharing
            # the study, propose the learning rates already tried, in lock-step.
            study.sampler = trial_sampler(cfg.sampler_seed, trial.number)
            lr = trial.suggest_float("lr", cfg.lr_low, cfg.lr_high, log=True)
            try:
                with _Heartbeat(storage, trial._trial_id):
                    values, step = evaluate(regime, lr, trial.number)
            except BaseException:  # stopped or failed: the trial is asked again later
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            try:
                trial.set_user_attr("step", step)
                for k, v in values.items():
                    trial.set_user_attr(k, v)
                study.tell(trial, [values["target/gain"], values["probe/drop"]])
            except optuna.exceptions.UpdateFinishedTrialError:
                # This process was silent longer than GRACE_S (e.g. suspended) and another one
                # failed the trial meanwhile: its result is dropped and the trial asked again.
                warnings.warn(f"sweep {experiment}/{regime}: trial {trial.number} was failed by "
                              f"another process (no heartbeat for {GRACE_S} s); it is run again",
                              stacklevel=1)
        rows += study_rows(study, experiment, regime)
    return to_frame(rows)


def study_rows(study: optuna.Study, experiment: str, regime: str) -> list[dict]:
    """Completed trials as long-schema rows (domain from the trial's attrs, default recsys)."""
    rows = []
    for t in study.trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        metrics = {k: v for k, v in t.user_attrs.items() if "/" in k}
        metrics["sweep/lr"] = t.params["lr"]
        rows += metric_rows(domain=t.user_attrs.get("domain", "recsys"), experiment=experiment,
                            regime=regime, seed=t.number, step=t.user_attrs.get("step", 0),
                            values=metrics)
    return rows
