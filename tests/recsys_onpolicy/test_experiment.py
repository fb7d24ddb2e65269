"""The experiment runner: how an experiment expands into runs (regimes x seeds x variants, paired
controls), the forgetting rows it adds for removed cohorts, and the parallel (jobs=2) path."""
from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_onpolicy.experiment import (
    RecsysExperiment,
    expand,
    run_recsys_experiment,
    with_forgetting,
)
from recsys_onpolicy.results import SCHEMA, metric_rows, to_frame
from recsys_onpolicy.run_config import RecsysRunConfig
from simulators.typed_config import ConfigError, validate

# 2 cohorts of 60 users, C = 20, K = 5, a D = 8 model; cohort 1 leaves the stream after day 1.
RUN = {
    "world": {"users": {"n_users": 120, "n_cohorts": 2},
              "items": {"n_items": 150, "n_topics": 8, "dim": 8, "items_per_day": 5},
              "candidates": {"n_candidates": 20}, "slate_size": 5, "history_len": 5},
    "model": {"embedding_dim": 8, "head_width": 16, "device": "cpu"},
    "days": 2,
    "removal": {"cohort": 1, "from_day": 1},
    "serve_batch_size": 256, "train_batch_size": 32, "probe_requests": 20,
    "warmup": {"days": 1},
}


def experiment(**fields) -> RecsysExperiment:
    data = {"experiment": "exp", "regimes": ["supervised_daily"], "run": copy.deepcopy(RUN),
            "probes": {"users_per_cohort": 15}} | fields
    return validate(RecsysExperiment, data)


# ---- expand ---------------------------------------------------------------------------------


def test_expand_regimes_seeds_variants_and_controls(tmp_path):
    exp = experiment(
        seeds=3, seed=5,
        regimes=["supervised_daily", {"name": "grpo_b0.1", "preset": "grpo", "beta": 0.1}],
        variants={"small": {"model.head_width": 8}, "hashed": {"model.user_rows": 10}})
    tasks = expand(exp, tmp_path)
    assert len(tasks) == 2 * 3 * 2 * 2  # regimes x seeds x variants x (run, control)
    assert [t.seed for t in tasks[:8]] == [5] * 8  # seed-major: parallel workers start apart
    assert {t.seed for t in tasks} == {5, 6, 7}
    assert {t.label for t in tasks} == {"supervised_daily@small", "supervised_daily@hashed",
                                        "grpo_b0.1@small", "grpo_b0.1@hashed"}
    first = tasks[:4]
    assert [(t.label, t.control) for t in first] == [
        ("supervised_daily@small", False), ("supervised_daily@small", True),
        ("grpo_b0.1@small", False), ("grpo_b0.1@small", True)]
    assert [t.out for t in first] == [
        str(tmp_path / "runs" / "small" / "supervised_daily" / "seed=5"),
        str(tmp_path / "runs" / "small" / "supervised_daily" / "seed=5-control"),
        str(tmp_path / "runs" / "small" / "grpo_b0.1" / "seed=5"),
        str(tmp_path / "runs" / "small" / "grpo_b0.1" / "seed=5-control")]
    for t in tasks:
        assert t.config["seed"] == t.seed
        variant = t.label.split("@")[1]
        assert t.config["model"]["head_width"] == (8 if variant == "small" else 16)
        assert t.config["model"]["user_rows"] == (10 if variant == "hashed" else None)
        # the control is the same run without the removal (the probes still hold the cohort
        # out, so both runs' groups cover the same users); the name stays in the label only
        assert t.config["removal"]["cohort"] == 1
        assert t.config["removal"].get("control", False) == t.control
        cfg = RecsysRunConfig.model_validate(t.config)
        assert cfg.removal.removed_on(0) == [] and cfg.removal.removed_on(1) == (
            [] if t.control else [1])
        assert t.experiment_suffix == ("/control" if t.control else "")
        assert "name" not in t.config["regime"]
    grpo = next(t for t in tasks if t.label.startswith("grpo"))
    assert grpo.config["regime"] == {"preset": "grpo", "beta": 0.1}


def test_expand_without_variants_uses_plain_labels(tmp_path):
    tasks = expand(experiment(regimes=["grpo", "ppo"], seeds=2), tmp_path)
    assert [(t.label, t.seed, t.control) for t in tasks] == [
        ("grpo", 0, False), ("grpo", 0, True), ("ppo", 0, False), ("ppo", 0, True),
        ("grpo", 1, False), ("grpo", 1, True), ("ppo", 1, False), ("ppo", 1, True)]
    assert all(Path(t.out).parent.parent.name == "base" for t in tasks)


@pytest.mark.parametrize("fields", [
    {"control": False},
    {"run": RUN | {"removal": {"cohort": None}}},
])
def test_no_controls_without_a_removal_or_when_turned_off(fields, tmp_path):
    tasks = expand(experiment(regimes=["grpo", "reinforce"], seeds=2, **fields), tmp_path)
    assert len(tasks) == 4 and not any(t.control for t in tasks)


@pytest.mark.parametrize("fields,message", [
    ({"regimes": ["grpo", {"preset": "grpo", "beta": 0.1}]}, "appear twice"),
    ({"regimes": ["not_a_preset"]}, "not_a_preset"),
    ({"regimes": [{"preset": "grpo", "epochs": 3}]}, "epochs"),
    ({"regimes": []}, "regimes"),
    ({"experiment": "has space"}, "experiment"),
    ({"seeds": 0}, "seeds"),
])
def test_bad_experiments_name_the_problem(fields, message):
    with pytest.raises(ConfigError, match=message):
        experiment(**fields)


def test_bad_variant_names_the_variant(tmp_path):
    exp = experiment(variants={"huge": {"model.head_width": 0}})
    with pytest.raises(ConfigError, match="variant huge.*head_width"):
        expand(exp, tmp_path)


def test_only_the_experiment_marks_its_controls(tmp_path):
    """removal.control in a user's run, a variant or a sweep would train on the "removed"
    cohort while being read as a removal run: refused everywhere."""
    from recsys_onpolicy.sweep_runner import validate_sweep_experiment

    control_run = copy.deepcopy(RUN)
    control_run["removal"]["control"] = True
    with pytest.raises(ConfigError, match="removal.control"):
        experiment(run=control_run)
    exp = experiment(variants={"ctrl": {"removal.control": True}})
    with pytest.raises(ConfigError, match="variant ctrl.*removal.control"):
        expand(exp, tmp_path)
    sweep = {"experiment": "exp", "regimes": ["supervised_daily"], "run": control_run,
             "sweep": {"regimes": ["supervised_daily"], "trials": 1}}
    with pytest.raises(ConfigError, match="removal.control"):
        validate_sweep_experiment(sweep)


# ---- forgetting rows ------------------------------------------------------------------------


def auc_rows(experiment_name: str, seed: int, aucs: dict[str, list[float]]) -> list[dict]:
    rows = []
    for group, values in aucs.items():
        for step, value in enumerate(values):
            rows += metric_rows(domain="recsys", experiment=experiment_name, regime="grpo",
                                seed=seed, step=step, values={"probe/auc": value}, group=group)
    return rows


def test_with_forgetting_hand_computed(tmp_path):
    exp = experiment(regimes=["grpo"], run=RUN | {"days": 3})  # D = 1, steps 0..3
    tasks = expand(exp, tmp_path)
    run = to_frame(auc_rows("exp", 0, {"c0": [0.6, 0.7, 0.7, 0.7], "c1": [0.6, 0.8, 0.7, 0.5]}))
    ctrl = to_frame(auc_rows("exp/control", 0, {"c0": [0.6, 0.7, 0.7, 0.7],
                                                  "c1": [0.6, 0.8, 0.8, 0.75]}))
    frame = with_forgetting(exp, [run, ctrl], tasks)
    assert frame.height == run.height + ctrl.height + 3 + 3
    got = {(r["metric"], r["step"]): r["value"] for r in frame.filter(
        pl.col("metric").str.starts_with("probe/forgetting")).iter_rows(named=True)}
    expected = {("probe/forgetting", 1): 0.0, ("probe/forgetting", 2): 0.1,
                ("probe/forgetting", 3): 0.3, ("probe/forgetting_vs_control", 1): 0.0,
                ("probe/forgetting_vs_control", 2): 0.1, ("probe/forgetting_vs_control", 3): 0.25}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - v) < 1e-12 for k, v in expected.items())
    assert set(frame.filter(pl.col("metric") == "probe/forgetting")["group"]) == {"c1"}


def test_each_variant_forgets_from_its_own_removal_day(tmp_path):
    """A variant that moves removal.from_day is measured from its own day D (and gets its own
    controls); a variant without a removal gets no forgetting rows."""
    exp = experiment(regimes=["grpo"], run=RUN | {"days": 3}, control=False, variants={
        "d1": {}, "d2": {"removal.from_day": 2}, "none": {"removal.cohort": None}})
    tasks = expand(exp, tmp_path)
    assert [t.variant for t in tasks] == ["d1", "d2", "none"]
    aucs = {"c1": [0.6, 0.8, 0.7, 0.5]}
    frames = []
    for t in tasks:
        rows = auc_rows("exp", 0, aucs)
        frames.append(to_frame(rows).with_columns(regime=pl.lit(t.label)))
    frame = with_forgetting(exp, frames, tasks)
    got = {(r["regime"], r["step"]): round(r["value"], 12) for r in frame.filter(
        pl.col("metric") == "probe/forgetting").iter_rows(named=True)}
    assert got == {("grpo@d1", 1): 0.0, ("grpo@d1", 2): 0.1, ("grpo@d1", 3): 0.3,
                   ("grpo@d2", 2): 0.0, ("grpo@d2", 3): 0.2}
    with_controls = expand(experiment(regimes=["grpo"], variants={
        "d1": {}, "none": {"removal.cohort": None}}), tmp_path)
    assert [(t.variant, t.control) for t in with_controls] == [
        ("d1", False), ("d1", True), ("none", False)]


def test_with_forgetting_without_a_removal_adds_nothing(tmp_path):
    exp = experiment(run=RUN | {"removal": {"cohort": None}})
    run = to_frame(auc_rows("exp", 0, {"c0": [0.6, 0.7]}))
    assert_frame_equal(with_forgetting(exp, [run], expand(exp, tmp_path)), run)


# ---- running: in-process and in 2 worker processes ------------------------------------------


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The tiny experiment (2 regimes x 1 seed x (run, control)) run in this process."""
    exp = experiment(regimes=["supervised_daily", "grpo"])
    out = tmp_path_factory.mktemp("serial")
    return exp, run_recsys_experiment(exp, out, progress=False, jobs=1)


def test_forgetting_rows_for_the_removed_cohort(serial):
    _, frame = serial
    assert dict(zip(frame.columns, frame.dtypes)) == SCHEMA
    forgetting = frame.filter(pl.col("metric") == "probe/forgetting")
    assert set(forgetting["group"]) == {"c1"}  # only the removed cohort
    assert set(forgetting["experiment"]) == {"exp"}  # not for the control runs
    assert set(zip(forgetting["regime"], forgetting["step"])) == {
        (r, s) for r in ("supervised_daily", "grpo") for s in (1, 2)}
    at_d = forgetting.filter(pl.col("step") == 1)["value"]
    assert (at_d == 0).all()  # AUC(D) - AUC(D)
    auc = frame.filter((pl.col("metric") == "probe/auc") & (pl.col("group") == "c1")
                       & (pl.col("experiment") == "exp"))
    for regime in ("supervised_daily", "grpo"):
        a = dict(auc.filter(pl.col("regime") == regime).select("step", "value").iter_rows())
        f = forgetting.filter((pl.col("regime") == regime) & (pl.col("step") == 2))["value"][0]
        assert f == pytest.approx(a[1] - a[2], abs=1e-12)
    vs = frame.filter(pl.col("metric") == "probe/forgetting_vs_control")
    assert vs.height == forgetting.height
    # at D the run and its control are the same model (the removal starts with day D's data)
    assert (vs.filter(pl.col("step") == 1)["value"] == 0).all()
    controls = frame.filter(pl.col("experiment") == "exp/control")
    assert set(controls["regime"]) == {"supervised_daily", "grpo"}
    assert controls.filter(pl.col("metric").str.contains("forgetting")).height == 0


def test_controls_probe_the_removal_runs_groups(serial):
    """A control holds the removed cohort out of its probe groups too (not of its training), so
    up to day D its Gain/Drop/KL rows are the removal run's exactly, and Drop vs control is the
    run's Drop minus the control's at every step (0 up to D)."""
    _, frame = serial
    keys = ["regime", "seed", "step", "metric", "group"]
    grouped = ("target/expected_clicks", "target/gain", "probe/drop", "probe/kl_to_base")
    part = frame.filter(pl.col("metric").is_in(grouped))
    run = part.filter(pl.col("experiment") == "exp").sort(keys)
    ctrl = part.filter(pl.col("experiment") == "exp/control").sort(keys)
    assert set(ctrl.filter(pl.col("metric") == "target/expected_clicks")["group"]) == {
        "train", "heldout"}
    early = [f.filter(pl.col("step") <= 1).drop("experiment") for f in (run, ctrl)]
    assert_frame_equal(*early)  # the same model and world until day D = 1
    later = [f.filter(pl.col("step") == 2)["value"] for f in (run, ctrl)]
    assert (later[0] != later[1]).any()  # from day D on the control still trains on cohort 1
    drops = part.filter(pl.col("metric") == "probe/drop")
    drop = {e: {(r["regime"], r["step"]): r["value"] for r in drops.filter(
        pl.col("experiment") == e).iter_rows(named=True)} for e in ("exp", "exp/control")}
    vs = frame.filter(pl.col("metric") == "probe/drop_vs_control")
    assert set(vs["experiment"]) == {"exp"} and vs["group"].is_null().all()
    assert vs.height == len(drop["exp"]) == 6  # 2 regimes x steps 0, 1, 2
    for r in vs.iter_rows(named=True):
        key = (r["regime"], r["step"])
        assert r["value"] == pytest.approx(drop["exp"][key] - drop["exp/control"][key], abs=1e-12)
        if r["step"] <= 1:
            assert r["value"] == 0


def test_two_jobs_give_the_same_metrics(serial, tmp_path):
    exp, frame = serial
    parallel = run_recsys_experiment(exp, tmp_path, progress=False, jobs=2)
    keys = ["experiment", "regime", "seed", "step", "metric", "group"]
    a, b = frame.sort(keys), parallel.sort(keys)
    assert_frame_equal(a.drop("value"), b.drop("value"))
    assert (a["value"] - b["value"]).abs().max() < 1e-6
    for regime in ("supervised_daily", "grpo"):
        for run in ("seed=0", "seed=0-control"):
            assert (tmp_path / "runs" / "base" / regime / run / "checkpoint.pt").is_file()
