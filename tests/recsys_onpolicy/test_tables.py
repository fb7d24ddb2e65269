"""The Gain/Drop/forgetting table against hand-computed means and Student-t intervals."""
from __future__ import annotations

import math

import polars as pl
import pytest

from recsys_onpolicy.results import metric_rows, to_frame
from recsys_onpolicy.tables import (
    format_ci,
    format_table,
    gain_drop_table,
    last_per_run,
    split_sweeps,
)

T_975_DF2 = 4.302652729749462  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def rows(regime="grpo", seed=0, step=0, group=None, domain="recsys", experiment="exp", **values):
    values = {k.replace("__", "/"): v for k, v in values.items()}
    return metric_rows(domain=domain, experiment=experiment, regime=regime, seed=seed, step=step,
                       values=values, group=group)


def three_seed_frame() -> pl.DataFrame:
    """Last-step gains 1, 2, 4 (earlier steps hold decoys); drops 0.1, 0.2, 0.3."""
    out = []
    for seed, (gain, drop) in enumerate([(1.0, 0.1), (2.0, 0.2), (4.0, 0.3)]):
        out += rows(seed=seed, step=0, target__gain=0.0, probe__drop=0.0)
        out += rows(seed=seed, step=1, target__gain=99.0, probe__drop=99.0)
        out += rows(seed=seed, step=2, target__gain=gain, probe__drop=drop)
    return to_frame(out)


def test_mean_and_t_interval_over_seeds_of_the_last_step():
    table = gain_drop_table(three_seed_frame())
    assert table.height == 1
    r = table.row(0, named=True)
    assert (r["domain"], r["experiment"], r["regime"], r["n_seeds"]) == ("recsys", "exp", "grpo", 3)
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)  # = sqrt(7/3)
    half = T_975_DF2 * sd / math.sqrt(3)
    assert r["gain_mean"] == pytest.approx(mean)
    assert (r["gain_low"], r["gain_high"]) == pytest.approx((mean - half, mean + half))
    half_drop = T_975_DF2 * 0.1 / math.sqrt(3)  # sd of 0.1, 0.2, 0.3 is 0.1
    assert (r["drop_mean"], r["drop_low"], r["drop_high"]) == pytest.approx(
        (0.2, 0.2 - half_drop, 0.2 + half_drop))


def test_optional_columns_only_when_present():
    table = gain_drop_table(three_seed_frame())
    assert not any(c.startswith(("forgetting", "kl_to_base")) for c in table.columns)
    only_auc = to_frame(rows(seed=0, group="c0", probe__auc=0.7))
    table = gain_drop_table(only_auc)  # gain and drop are always columns, null when absent
    assert table["gain_mean"].to_list() == [None] and table["n_seeds"].to_list() == [1]


def test_forgetting_averages_removed_cohorts_and_kl_reads_train_cohorts():
    out = []
    for seed in (0, 1):
        for step, scale in ((3, 1.0), (5, 2.0)):  # removal at day 3, last day 5
            out += rows(seed=seed, step=step, group="c1", probe__forgetting=0.1 * scale * (seed + 1))
            out += rows(seed=seed, step=step, group="c2", probe__forgetting=0.3 * scale * (seed + 1))
            out += rows(seed=seed, step=step, group="c1", probe__forgetting_vs_control=0.05)
            out += rows(seed=seed, step=step, group="train", probe__kl_to_base=0.5 + seed)
            out += rows(seed=seed, step=step, group="heldout", probe__kl_to_base=100.0)
    r = gain_drop_table(to_frame(out)).row(0, named=True)
    # per seed: mean of c1 and c2 on day 5 = 0.4 (seed 0) and 0.8 (seed 1)
    assert r["forgetting_mean"] == pytest.approx(0.6)
    half = 12.706204736174698 * math.sqrt(0.08) / math.sqrt(2)  # t_{0.975,1}, sd of (0.4, 0.8)
    assert r["forgetting_high"] == pytest.approx(0.6 + half)
    assert r["forgetting_vs_control_mean"] == pytest.approx(0.05)
    assert r["kl_to_base_mean"] == pytest.approx(1.0)  # train rows only: 0.5 and 1.5


def test_llm_kl_has_no_group_and_one_seed_gives_no_interval():
    frame = to_frame(rows(domain="llm", experiment="toy", step=10, target__gain=0.5,
                          probe__drop=0.1, probe__kl_to_base=0.3))
    r = gain_drop_table(frame).row(0, named=True)
    assert r["kl_to_base_mean"] == pytest.approx(0.3)
    assert r["n_seeds"] == 1 and math.isnan(r["gain_low"]) and math.isnan(r["gain_high"])
    assert "0.5 [n/a]" in format_table(gain_drop_table(frame))


def test_each_run_uses_its_own_last_step():
    frame = to_frame(rows(seed=0, step=3, target__gain=1.0) + rows(seed=1, step=7, target__gain=3.0)
                     + rows(seed=1, step=3, target__gain=-5.0))
    last = last_per_run(frame, "target/gain").sort("seed")
    assert last["step"].to_list() == [3, 7] and last["value"].to_list() == [1.0, 3.0]


def test_a_value_missing_at_a_runs_final_step_is_nan_not_an_earlier_days():
    """Seed 1 has no forgetting on its final day (e.g. an undefined AUC): the cell must not
    quietly use its day-3 value; a run that stops early uses its own final step."""
    out = []
    for seed in (0, 1):
        out += rows(seed=seed, step=3, group="c1", probe__forgetting=0.1, target__gain=1.0)
        out += rows(seed=seed, step=4, target__gain=2.0)
    out += rows(seed=0, step=4, group="c1", probe__forgetting=0.3)
    out += rows(regime="toy", seed=0, step=5, target__gain=1.0)  # stops at step 5
    out += rows(regime="toy", seed=1, step=5, target__gain=-1.0)
    out += rows(regime="toy", seed=1, step=9, target__gain=3.0)  # stops at step 9
    table = {r["regime"]: r for r in gain_drop_table(to_frame(out)).iter_rows(named=True)}
    assert table["grpo"]["gain_mean"] == pytest.approx(2.0)
    assert math.isnan(table["grpo"]["forgetting_mean"]) and table["grpo"]["n_seeds"] == 2
    assert "nan" in format_table(gain_drop_table(to_frame(out)))
    assert table["toy"]["gain_mean"] == pytest.approx(2.0)  # 1 at step 5, 3 at step 9
    assert table["toy"]["forgetting_mean"] is None  # absent from the setting: "-"


def test_sweep_trials_are_not_counted_as_seeds():
    trial = rows(regime="grpo", seed=5, step=2, sweep__lr=0.01, target__gain=50.0, probe__drop=9.0)
    frame = pl.concat([three_seed_frame(), to_frame(trial)])
    runs, sweeps = split_sweeps(frame)
    assert sweeps["seed"].unique().to_list() == [5] and 5 not in runs["seed"].to_list()
    assert gain_drop_table(frame)["n_seeds"].to_list() == [3]


def test_settings_are_split_by_domain_experiment_and_regime():
    frame = pl.concat([three_seed_frame(),
                       to_frame(rows(regime="supervised_daily", target__gain=1.0, probe__drop=0.5)),
                       to_frame(rows(domain="llm", experiment="toy", target__gain=1.0))])
    table = gain_drop_table(frame)
    assert table.select("domain", "experiment", "regime").rows() == [
        ("llm", "toy", "grpo"), ("recsys", "exp", "grpo"), ("recsys", "exp", "supervised_daily")]


def test_empty_frame_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        gain_drop_table(to_frame([]))


def test_format_table_aligns_columns_and_prints_mean_and_interval():
    text = format_table(gain_drop_table(three_seed_frame()))
    header, rule, row = text.splitlines()
    mean, half = 7 / 3, T_975_DF2 * math.sqrt(7 / 3) / math.sqrt(3)
    assert f"{mean:.4g} [{mean - half:.4g}, {mean + half:.4g}]" in row
    for name, cell in (("gain", f"{mean:.4g}"), ("drop", "0.2 [")):
        assert header.index(name) == row.index(cell)  # the cell starts under its header
    assert set(rule.replace(" ", "")) == {"-"}


def test_format_ci_tells_absent_from_nan_and_single_seed():
    assert format_ci(None, None, None) == "-"
    assert format_ci(math.nan, math.nan, math.nan) == "nan"
    assert format_ci(0.5, math.nan, math.nan) == "0.5 [n/a]"
    assert format_ci(-0.123456, -0.2, 0.01) == "-0.1235 [-0.2, 0.01]"
