"""Learning-rate sweeps with optuna: the Gain/Drop trade-off frontier per regime.

One optuna study per (experiment, regime), two objectives: maximise Gain, minimise Drop
(NSGA-II for >1 objective is overkill at these budgets, so trials sample the learning rate
log-uniformly with a seeded TPE sampler and the frontier is read off afterwards). Studies live
in optuna's RDB storage: SQLite in the run directory by default (``sqlite:///RUN_DIR/sweep.db``),
or any URL given with ``--storage`` (e.g. ``postgresql://host/db``) so several machines can
work on one study: each process asks for trials until the study holds ``trials`` of them.
Interrupted sweeps resume: finished trials are kept, a trial that was running is marked failed
and re-asked.

The sweep writes its results in the long schema: ``experiment`` = the config's, ``regime`` =
preset, ``seed`` = trial number, ``step`` = final step, metrics ``sweep/lr``, ``target/gain``,
``probe/drop``.
"""
from __future__ import annotations

from collections.abc import Callable

import optuna
import polars as pl
from pydantic import Field, model_validator

from recsys_onpolicy.results import metric_rows, to_frame
from simulators.typed_config import StrictModel

# evaluate(regime, lr, trial_number) -> {"target/gain": g, "probe/drop": d, ...}, final step
Evaluate = Callable[[str, float, int], tuple[dict[str, float], int]]


class SweepConfig(StrictModel):
    regimes: list[str] = Field(default_factory=lambda: ["supervised_daily", "grpo"], min_length=1)
    """Regime presets to sweep; one optuna study each."""
    trials: int = Field(8, ge=1, le=10_000)
    """Trials per regime (total across all processes sharing the storage)."""
    lr_low: float = Field(1e-4, gt=0)
    """Lowest learning rate tried (log-uniform between lr_low and lr_high)."""
    lr_high: float = Field(1e-1, gt=0)
    """Highest learning rate tried."""
    storage: str | None = None
    """Optuna RDB storage URL; None = sqlite:///<run dir>/sweep.db."""
    sampler_seed: int = 0
    """Seed of optuna's TPE sampler (reproducible proposals on one machine)."""

    @model_validator(mode="after")
    def _check_range(self) -> SweepConfig:
        if self.lr_low >= self.lr_high:
            raise ValueError(
                f"lr_low ({self.lr_low}) must be below lr_high ({self.lr_high}): swap or widen them"
            )
        return self


def storage_url(cfg: SweepConfig, run_dir) -> str:
    return cfg.storage or f"sqlite:///{run_dir}/sweep.db"


def _study(cfg: SweepConfig, url: str, experiment: str, regime: str) -> optuna.Study:
    return optuna.create_study(
        study_name=f"{experiment}/{regime}",
        storage=url,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
        load_if_exists=True,
    )


def _finished(study) -> int:
    """Trials of ``study`` that completed."""
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _requeue_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process are failed so they are asked again."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def run_sweep(cfg: SweepConfig, url: str, experiment: str, evaluate: Evaluate,
              requeue: bool = True) -> pl.DataFrame:
    """Run (or continue) the studies until each holds ``cfg.trials`` finished trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for regime in cfg.regimes:
        study = _study(cfg, url, experiment, regime)
        if requeue:
            _requeue_stale(study)
        while _finished(study) < cfg.trials:
            trial = study.ask()
            lr = trial.suggest_float("lr", cfg.lr_low, cfg.lr_high, log=True)
            values, step = evaluate(regime, lr, trial.number)
            trial.set_user_attr("step", step)
            for k, v in values.items():
                trial.set_user_attr(k, v)
            study.tell(trial, [values["target/gain"], values["probe/drop"]])
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
