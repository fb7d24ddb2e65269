import polars as pl
import pytest

from recsys_onpolicy.sweep import SweepConfig, run_sweep, storage_url
from simulators.typed_config import ConfigError, validate


def fake_evaluate(calls):
    def evaluate(regime, lr, trial):
        calls.append((regime, lr, trial))
        # a known trade-off: gain and drop both grow with log lr
        return {"target/gain": lr * 10, "probe/drop": lr * (5 if regime == "sft" else 1)}, 7
    return evaluate


def test_sweep_rows_and_resume(tmp_path):
    cfg = validate(SweepConfig, {"regimes": ["sft", "grpo"], "trials": 3})
    url = storage_url(cfg, tmp_path)
    calls = []
    frame = run_sweep(cfg, url, "lr_sweep", fake_evaluate(calls))
    assert len(calls) == 6
    lrs = frame.filter(pl.col("metric") == "sweep/lr")
    assert lrs.height == 6 and lrs["value"].min() >= 1e-4 and lrs["value"].max() <= 1e-1
    wide = frame.pivot(on="metric", index=["regime", "seed"], values="value")
    assert (wide["target/gain"] - wide["sweep/lr"] * 10).abs().max() < 1e-12
    assert set(frame["step"].to_list()) == {7}
    # resuming with a larger budget only runs the missing trials
    cfg2 = cfg.model_copy(update={"trials": 4})
    calls2 = []
    frame2 = run_sweep(cfg2, url, "lr_sweep", fake_evaluate(calls2))
    assert len(calls2) == 2
    assert frame2.filter(pl.col("metric") == "sweep/lr").height == 8


def test_proposals_are_reproducible_and_a_resumed_or_shared_study_never_repeats_them(tmp_path):
    """Seeded by (sampler_seed, trial number): the same config proposes the same learning rates
    in a fresh study, and a resumed study (or a second machine on it) proposes new ones."""
    cfg = validate(SweepConfig, {"regimes": ["grpo"], "trials": 4})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    once, twice = [], []
    run_sweep(cfg, storage_url(cfg, tmp_path / "a"), "lr_sweep", fake_evaluate(once))
    url = storage_url(cfg, tmp_path / "b")
    for n in (1, 2, 3, 4):  # four processes, each resuming the study for one more trial
        run_sweep(cfg.model_copy(update={"trials": n}), url, "lr_sweep", fake_evaluate(twice))
    assert [lr for _, lr, _ in once] == [lr for _, lr, _ in twice]
    assert len({lr for _, lr, _ in once}) == 4


def test_bad_range():
    with pytest.raises(ConfigError, match="lr_low"):
        validate(SweepConfig, {"lr_low": 0.5, "lr_high": 0.1})


def running_trial(cfg, url, key=""):
    """A trial another live process is running: asked, with a fresh heartbeat."""
    from recsys_onpolicy import sweep

    storage = sweep.open_storage(url)
    study = sweep._study(cfg, storage, "lr_sweep", cfg.regimes[0], key)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    return study, trial


def test_a_joining_process_leaves_a_live_trial_alone(tmp_path):
    import optuna

    cfg = validate(SweepConfig, {"regimes": ["sft"], "trials": 2})
    url = storage_url(cfg, tmp_path)
    study, trial = running_trial(cfg, url)
    run_sweep(cfg, url, "lr_sweep", fake_evaluate([]))
    states = {t.number: t.state for t in study.trials}
    assert states[trial.number] == optuna.trial.TrialState.RUNNING  # not failed under it
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 2


def test_a_dead_process_trial_is_failed_after_the_grace_period(tmp_path, monkeypatch):
    import time

    import optuna

    from recsys_onpolicy import sweep

    monkeypatch.setattr(sweep, "GRACE_S", 1)
    cfg = validate(SweepConfig, {"regimes": ["sft"], "trials": 1})
    url = storage_url(cfg, tmp_path)
    study, trial = running_trial(cfg, url)
    time.sleep(2.5)  # no heartbeat since: its process is gone
    run_sweep(cfg, url, "lr_sweep", fake_evaluate([]))
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL


def test_a_stopped_trial_is_failed_and_asked_again(tmp_path):
    import optuna

    cfg = validate(SweepConfig, {"regimes": ["sft"], "trials": 1})
    url = storage_url(cfg, tmp_path)

    def stopped(regime, lr, trial):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, url, "lr_sweep", stopped)
    calls = []
    frame = run_sweep(cfg, url, "lr_sweep", fake_evaluate(calls))
    assert len(calls) == 1 and frame.filter(pl.col("metric") == "sweep/lr").height == 1
    from recsys_onpolicy import sweep

    study = sweep._study(cfg, sweep.open_storage(url), "lr_sweep", "sft", "")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL,
                                               optuna.trial.TrialState.COMPLETE]


def test_the_default_storage_path_may_hold_any_character(tmp_path):
    cfg = validate(SweepConfig, {"regimes": ["sft"], "trials": 1})
    out = tmp_path / "sw?x=1 #a"
    out.mkdir()
    run_sweep(cfg, storage_url(cfg, out), "lr_sweep", fake_evaluate([]))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert (out / "sweep.db").is_file()


def test_bad_storage_and_infinite_range_are_config_errors(tmp_path):
    from recsys_onpolicy.sweep import open_storage

    with pytest.raises(ConfigError, match="cannot be opened"):
        open_storage("notaurl")
    with pytest.raises(ConfigError, match="lr_high"):
        validate(SweepConfig, {"lr_high": float("inf")})


def test_a_trial_failed_by_another_process_meanwhile_is_run_again(tmp_path):
    """A process suspended past the grace period finds its trial failed by another one: it
    drops that result with a warning and asks again, instead of crashing."""
    import optuna

    from recsys_onpolicy import sweep

    cfg = validate(SweepConfig, {"regimes": ["sft"], "trials": 1})
    url = storage_url(cfg, tmp_path)
    calls = []

    def failed_meanwhile(regime, lr, trial):
        calls.append(trial)
        if len(calls) == 1:  # as another process's fail_stale_trials would
            storage = sweep.open_storage(url)
            study = sweep._study(cfg, storage, "lr_sweep", "sft", "")
            storage.set_trial_state_values(study.trials[trial]._trial_id,
                                           optuna.trial.TrialState.FAIL)
        return {"target/gain": lr, "probe/drop": lr}, 1

    with pytest.warns(UserWarning, match="failed by another process"):
        frame = run_sweep(cfg, url, "lr_sweep", failed_meanwhile)
    assert calls == [0, 1] and frame.filter(pl.col("metric") == "sweep/lr").height == 1
