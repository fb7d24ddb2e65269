"""The recipe end to end on the smoke budget: schema, step-0 rows, Gain/Drop arithmetic, the
table's t intervals, the lr sweep and the command line."""

import math

import polars as pl
import pytest
import torch
import yaml
from scipy import stats

from llm_reference.config import PRESETS, TaskConfig, smoke_config
from llm_reference.recipe import (
    _run_order,
    format_table,
    gain_and_drop,
    gain_drop_table,
    lr_sweep,
    main,
    run_recipe,
)
from llm_reference.tasks import build_suite
from recsys_onpolicy.results import check_schema, read_metrics, to_frame


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    cfg = smoke_config(
        runtime={"cache_dir": str(root / "cache"), "run_dir": str(root / "run"), "verbose": False}
    )
    return cfg, run_recipe(cfg), root


def test_frame_is_in_the_shared_schema_and_written(run):
    _, frame, root = run
    check_schema(frame)
    assert frame.equals(read_metrics(root / "run" / "metrics.parquet"))
    assert set(frame["domain"]) == {"llm"} and set(frame["experiment"]) == {"tiny_lm_recipe"}
    assert frame["regime"].unique(maintain_order=True).to_list() == list(PRESETS)
    assert set(frame.filter(pl.col("metric") == "probe/accuracy")["group"]) == {
        "addition",
        "copying",
    }
    assert set(frame.filter(pl.col("metric") == "target/accuracy")["group"]) == {"countdown"}


def test_every_run_starts_from_the_same_base_measurement(run):
    _, frame, _ = run
    start = frame.filter(pl.col("step") == 0)
    per_regime = [
        start.filter(pl.col("regime") == r)
        .select("metric", "group", "value")
        .sort("metric", "group")
        for r in PRESETS
    ]
    for other in per_regime[1:]:
        assert other.equals(per_regime[0])
    values = {m: v for m, v in zip(per_regime[0]["metric"], per_regime[0]["value"])}
    assert values["target/gain"] == values["probe/drop"] == 0.0
    assert values["probe/kl_to_base"] == pytest.approx(0.0, abs=1e-6)


def test_gain_and_drop_follow_from_the_accuracies(run):
    cfg, frame, _ = run
    steps = cfg.regime.steps
    for regime in PRESETS:
        sub = frame.filter(pl.col("regime") == regime)

        def value(step, metric, group=None, sub=sub):
            rows = sub.filter((pl.col("step") == step) & (pl.col("metric") == metric))
            rows = rows.filter(pl.col("group") == group) if group else rows
            assert len(rows) == 1
            return rows["value"][0]

        gain = value(steps, "target/accuracy", "countdown") - value(
            0, "target/accuracy", "countdown"
        )
        assert value(steps, "target/gain") == pytest.approx(gain)
        drops = [
            value(0, "probe/accuracy", t) - value(steps, "probe/accuracy", t)
            for t in ("addition", "copying")
        ]
        assert value(steps, "probe/drop") == pytest.approx(sum(drops) / 2)
        assert sub.filter(pl.col("metric") == "train/loss")["step"].to_list() == list(
            range(1, steps + 1)
        )
        assert value(steps, "train/wall_seconds") > 0


def test_gain_and_drop_on_hand_made_accuracies():
    suite = build_suite(TaskConfig(n_eval=4, non_target=["addition", "copying"]))
    before = {("target/accuracy", "countdown"): 0.2, ("probe/accuracy", "addition"): 0.9,
              ("probe/accuracy", "copying"): 0.5}
    now = {("target/accuracy", "countdown"): 0.7, ("probe/accuracy", "addition"): 0.6,
           ("probe/accuracy", "copying"): 0.6}
    # Gain 0.7 - 0.2; Drop = mean(0.9 - 0.6, 0.5 - 0.6) = 0.1 (a fall is a positive Drop)
    assert gain_and_drop(now, before, suite) == {
        ("target/gain", None): pytest.approx(0.5), ("probe/drop", None): pytest.approx(0.1)}


def test_table_means_and_t_intervals_by_hand():
    rows = []
    for regime, gains in (("a", [0.1, 0.2, 0.6]), ("b", [0.3])):
        for seed, g in enumerate(gains):
            for metric, v in (("target/gain", g), ("probe/drop", -g), ("probe/kl_to_base", 2 * g)):
                rows.append(
                    {
                        "domain": "llm",
                        "experiment": "x",
                        "regime": regime,
                        "seed": seed,
                        "step": 0,
                        "metric": metric,
                        "value": 0.0,
                        "group": None,
                    }
                )
                rows.append(
                    {
                        "domain": "llm",
                        "experiment": "x",
                        "regime": regime,
                        "seed": seed,
                        "step": 5,
                        "metric": metric,
                        "value": v,
                        "group": None,
                    }
                )
    table = gain_drop_table(to_frame(rows))
    a = table.row(0, named=True)
    lo, hi = stats.t.interval(0.95, 2, loc=0.3, scale=stats.sem([0.1, 0.2, 0.6]))
    assert a["regime"] == "a" and a["seeds"] == 3
    assert (
        a["gain"] == pytest.approx(0.3)
        and a["drop"] == pytest.approx(-0.3)
        and a["kl"] == pytest.approx(0.6)
    )
    assert a["gain_ci95"] == pytest.approx((hi - lo) / 2)
    assert a["kl_ci95"] == pytest.approx(hi - lo)
    b = table.row(1, named=True)
    assert b["seeds"] == 1 and math.isnan(b["gain_ci95"])
    text = format_table(table)
    assert "+30.0 ±  " in text and "n/a" in text


def test_grpo_runs_before_the_sft_that_reuses_its_traces():
    assert _run_order(["sft_on_rl_traces", "teacher_sft", "grpo"]) == [
        "grpo",
        "sft_on_rl_traces",
        "teacher_sft",
    ]
    assert _run_order(["grpo", "sft_on_rl_traces"]) == ["grpo", "sft_on_rl_traces"]


def test_lr_sweep_labels_each_learning_rate(run):
    cfg, _, _ = run
    sub = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"run_dir": None})})
    frame = lr_sweep(sub, [1e-3, 1e-2], regimes=["reinforce"])
    assert frame["regime"].unique(maintain_order=True).to_list() == [
        "reinforce@lr=0.001",
        "reinforce@lr=0.01",
    ]
    assert gain_drop_table(frame)["regime"].to_list() == ["reinforce@lr=0.001", "reinforce@lr=0.01"]
    with pytest.raises(ValueError, match="at least one learning rate"):
        lr_sweep(sub, [])


def test_command_line_runs_a_config_file(run, tmp_path, capsys):
    _, _, root = run
    data = smoke_config(
        regimes=["self_sft"], runtime={"cache_dir": str(root / "cache")}
    ).model_dump()
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    main([str(path), "--out", str(tmp_path / "out")])
    assert read_metrics(tmp_path / "out")["regime"].unique().to_list() == ["self_sft"]
    out = capsys.readouterr().out
    assert "loaded from" in out and "self_sft" in out and "gain (pp)" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_smoke_recipe_runs_unchanged_on_cuda(tmp_path):
    cfg = smoke_config(
        regimes=["teacher_sft", "grpo_kl"],
        runtime={"accelerator": "cuda", "cache_dir": str(tmp_path), "verbose": False},
    )
    frame = run_recipe(cfg)
    check_schema(frame)
    assert frame.filter(pl.col("metric") == "train/loss")["value"].is_finite().all()
