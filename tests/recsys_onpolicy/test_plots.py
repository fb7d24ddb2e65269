"""The report's figures on hand-built frames: what each panel draws, and its title statistics."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from matplotlib.figure import Figure

from recsys_onpolicy import plots
from recsys_onpolicy.regimes.config import PRESETS
from recsys_onpolicy.results import metric_rows, to_frame

T_975_DF1 = 12.706204736174698  # Student t quantile 0.975, 1 degree of freedom


def rows(regime="grpo", seed=0, step=0, group=None, domain="recsys", experiment="exp", **values):
    values = {k.replace("__", "/"): v for k, v in values.items()}
    return metric_rows(domain=domain, experiment=experiment, regime=regime, seed=seed, step=step,
                       values=values, group=group)


def visible_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_visible()]


def forgetting_frame(control: bool = True) -> pl.DataFrame:
    """Cohort c0 removed on day 2; two seeds forget 0.1 and 0.3 per day after removal."""
    out = []
    for seed, rate in ((0, 0.1), (1, 0.3)):
        for day in range(5):
            for c in ("c0", "c1"):
                auc = 0.8 - (rate * (day - 2) if c == "c0" and day >= 2 else 0.0)
                out += rows(seed=seed, step=day, group=c, probe__auc=auc, probe__auc_oracle=0.9)
            if day >= 2:
                out += rows(seed=seed, step=day, group="c0", probe__forgetting=rate * (day - 2))
                if control:
                    out += rows(seed=seed, step=day, group="c0",
                                probe__forgetting_vs_control=rate * (day - 2) / 2)
    return to_frame(out)


def test_mean_band_is_the_mean_and_t_interval_over_seeds():
    band = plots.mean_band(forgetting_frame(), "probe/forgetting").filter(pl.col("step") == 4)
    mean, sd = 0.4, math.sqrt(0.08)  # seeds forgot 0.2 and 0.6 by day 4: sd = 0.2 * sqrt(2)
    half = T_975_DF1 * sd / math.sqrt(2)
    assert band.row(0, named=True) == pytest.approx(
        {"label": "grpo", "step": 4, "mean": mean, "low": mean - half, "high": mean + half, "n": 2})


def test_bands_are_cut_to_the_values_a_metric_can_take():
    """Two seeds' AUC of c0 on day 4 (0.6 and 0.2): the t-interval 0.4 +- 2.54 is cut to
    [0, 1], the mean is not; forgetting (unbounded) keeps its whole interval."""
    frame = forgetting_frame()
    c0 = pl.col("group") == "c0"
    auc = plots.mean_band(frame, "probe/auc", c0).filter(pl.col("step") == 4).row(0, named=True)
    assert (auc["mean"], auc["low"], auc["high"]) == pytest.approx((0.4, 0.0, 1.0))
    forgetting = plots.mean_band(frame, "probe/forgetting").filter(pl.col("step") == 4)
    assert forgetting["low"][0] == pytest.approx(0.4 - T_975_DF1 * math.sqrt(0.08) / math.sqrt(2))
    one_seed = plots.mean_band(frame.filter(pl.col("seed") == 0), "probe/auc", c0)
    assert one_seed["low"].is_nan().all()  # one seed: no band, not a band cut to [0, 1]


def test_forgetting_curves_draw_both_panels_and_mark_the_removal_day():
    fig = plots.forgetting_curves(forgetting_frame())
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == [
        "forgetting of the removed cohort", "forgetting minus paired control"]
    mean_line = axes[0].get_lines()[0]
    assert list(mean_line.get_xdata()) == [2, 3, 4]
    assert list(mean_line.get_ydata()) == pytest.approx([0.0, 0.2, 0.4])
    assert list(axes[1].get_lines()[0].get_ydata()) == pytest.approx([0.0, 0.1, 0.2])
    removal = [ln for ln in axes[0].get_lines() if ln.get_label() == "removal day D"]
    assert len(removal) == 1 and list(removal[0].get_xdata()) == [2, 2]
    assert len(visible_axes(plots.forgetting_curves(forgetting_frame(control=False)))) == 1


def test_cohort_auc_curves_put_the_removed_cohort_first_with_the_oracle_ceiling():
    axes = visible_axes(plots.cohort_auc_curves(forgetting_frame()))
    assert [ax.get_title() for ax in axes] == ["cohort c0 (removed)", "cohort c1"]
    oracle = [ln for ln in axes[1].get_lines() if ln.get_label() == "oracle ceiling"]
    assert len(oracle) == 1 and set(oracle[0].get_ydata()) == {0.9}


def test_oracle_ceiling_is_drawn_per_regime_when_the_worlds_differ():
    """With dynamics on each regime's world has its own oracle: no averaged 'ceiling' that a
    regime's AUC could sit above."""
    out = []
    for regime, oracle in (("grpo", 0.9), ("supervised_daily", 0.7)):
        for day in range(3):
            out += rows(regime=regime, step=day, group="c0", probe__auc=oracle - 0.05,
                        probe__auc_oracle=oracle)
    (ax,) = visible_axes(plots.cohort_auc_curves(to_frame(out)))
    oracles = {ln.get_label(): set(ln.get_ydata()) for ln in ax.get_lines()
               if "oracle" in ln.get_label()}
    assert oracles == {"grpo oracle": {0.9}, "supervised_daily oracle": {0.7}}
    colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
    assert colours["grpo oracle"] == colours["grpo"]


def test_a_preset_has_the_same_colour_on_every_page_and_names_never_share_one():
    report = plots.colors_for(["grpo", "supervised_daily", "iterative_sft"])
    comparison = plots.colors_for(["grpo", "ppo", "teacher_sft", "my_grpo", "iterative_sft"])
    assert all(report[n] == comparison[n] for n in ("grpo", "iterative_sft"))
    many = plots.colors_for([*PRESETS, *(f"custom{i}" for i in range(10))])
    assert len(set(many.values())) == len(many) == 20


def test_a_regime_has_one_colour_in_every_experiment_and_figure():
    """Labels carry the experiment prefix when there are several; the colour follows the regime
    and the line style / marker the experiment, and the KL scatter (whose points may miss a
    label) uses the colours of the curves."""
    out = []
    for exp in ("exp", "exp/control"):
        for regime in ("grpo", "supervised_daily"):
            for step in (0, 1, 2):
                out += rows(regime=regime, experiment=exp, step=step, target__gain=step * 0.1,
                            probe__drop=0.01 * step)
            if exp == "exp" and regime == "supervised_daily":
                out += rows(regime=regime, experiment=exp, step=2, probe__kl_to_base=0.3)
    frame = to_frame(out)
    styles = plots.styles_for(frame)
    assert set(styles) == {"exp: grpo", "exp: supervised_daily", "exp/control: grpo",
                           "exp/control: supervised_daily"}
    assert styles["exp: grpo"].color == styles["exp/control: grpo"].color
    assert styles["exp: grpo"].color != styles["exp: supervised_daily"].color
    assert styles["exp: grpo"].line != styles["exp/control: grpo"].line
    curves = visible_axes(plots.gain_drop_curves(frame))[0]
    colour = {ln.get_label(): ln.get_color() for ln in curves.get_lines()}
    (scatter,) = visible_axes(plots.kl_drop_scatter(frame))
    (points,) = scatter.collections
    assert tuple(points.get_facecolor()[0]) == pytest.approx(colour["exp: supervised_daily"])


def test_kl_drop_scatter_titles_carry_pearson_r_and_r2_per_domain():
    xs, ys = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]  # r = 3.5 / sqrt(5 * 4.75)
    out = []
    for seed, (x, y) in enumerate(zip(xs, ys)):
        out += rows(seed=seed, step=3, group="train", probe__kl_to_base=x)
        out += rows(seed=seed, step=3, group="heldout", probe__kl_to_base=50.0)  # not training
        out += rows(seed=seed, step=3, probe__drop=y)
        out += rows(domain="llm", experiment="toy", seed=seed, step=9, probe__kl_to_base=x,
                    probe__drop=-y)
    r = 3.5 / math.sqrt(5 * 4.75)
    titles = [ax.get_title() for ax in visible_axes(plots.kl_drop_scatter(to_frame(out)))]
    assert titles == [f"llm / toy: Pearson r = {-r:.3f}, R² = {r * r:.3f}, n = 4",
                      f"recsys / exp: Pearson r = {r:.3f}, R² = {r * r:.3f}, n = 4"]


def test_kl_drop_fits_each_experiment_apart_and_leaves_out_non_finite_points():
    """Two experiments of one domain are two panels with their own r (pooled, their offset
    would make the fit); a NaN KL is left out of its panel's fit and counted."""
    xs, ys = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    out = []
    for seed, (x, y) in enumerate(zip(xs, ys)):
        out += rows(experiment="a", seed=seed, step=3, group="train", probe__kl_to_base=x)
        out += rows(experiment="a", seed=seed, step=3, probe__drop=y)
        out += rows(experiment="b", seed=seed, step=3, group="train",
                    probe__kl_to_base=100.0 + x)
        out += rows(experiment="b", seed=seed, step=3, probe__drop=10.0 - y)
    out += rows(experiment="a", seed=9, step=3, group="train", probe__kl_to_base=math.nan)
    out += rows(experiment="a", seed=9, step=3, probe__drop=1.0)
    r = 3.5 / math.sqrt(5 * 4.75)
    titles = [ax.get_title() for ax in visible_axes(plots.kl_drop_scatter(to_frame(out)))]
    assert titles == [
        f"recsys / a: Pearson r = {r:.3f}, R² = {r * r:.3f}, n = 4 (+1 non-finite, left out)",
        f"recsys / b: Pearson r = {-r:.3f}, R² = {r * r:.3f}, n = 4"]


def test_metric_panels_never_average_unlike_groups():
    out = []
    for step in (0, 1):
        out += rows(step=step, group="train", target__expected_clicks=1.0)
        out += rows(step=step, group="heldout", target__expected_clicks=3.0)
        for k in range(3):
            out += rows(step=step, group=f"c{k}", drift__rows_touched=float(k))
        out += rows(step=step, group="c2", probe__forgetting=0.1)
        out += rows(step=step, train__loss=0.5)
    frame = to_frame(out)
    titles = {m: [t for t, _ in plots.metric_panels(frame, m)] for m in (
        "target/expected_clicks", "drift/rows_touched", "train/loss")}
    assert titles == {
        "target/expected_clicks": ["target/expected_clicks [train]",
                                   "target/expected_clicks [heldout]"],
        "drift/rows_touched": ["drift/rows_touched [removed cohorts]",
                               "drift/rows_touched [other cohorts]"],
        "train/loss": ["train/loss"]}
    # a removal without forgetting rows (no AUC probe): the cohorts cannot be told apart, so
    # each gets its own panel rather than one mean
    unnamed = frame.filter(pl.col("metric") != "probe/forgetting")
    assert [t for t, _ in plots.metric_panels(unnamed, "drift/rows_touched")] == [
        "drift/rows_touched [c0]", "drift/rows_touched [c1]", "drift/rows_touched [c2]"]
    no_removal = unnamed.filter(pl.col("group") != "heldout")
    assert [t for t, _ in plots.metric_panels(no_removal, "drift/rows_touched")] == [
        "drift/rows_touched (mean over groups)"]
    fig = plots.metric_curves(frame, ["target/expected_clicks", "drift/rows_touched"], "t")
    means = [list(ax.get_lines()[0].get_ydata()) for ax in visible_axes(fig)]
    assert means == [[1.0, 1.0], [3.0, 3.0], [2.0, 2.0], [0.5, 0.5]]


def test_kl_drop_scatter_with_too_few_points_says_r_is_undefined():
    frame = to_frame(rows(group="train", probe__kl_to_base=1.0) + rows(probe__drop=0.2))
    assert "r = n/a" in visible_axes(plots.kl_drop_scatter(frame))[0].get_title()


def test_pareto_front_keeps_non_dominated_points_by_drop():
    drop = np.array([0.1, 0.2, 0.15, 0.3, 0.05, 0.3])
    gain = np.array([1.0, 2.0, 0.5, 3.0, 0.2, 2.5])
    assert plots.pareto_front(drop, gain).tolist() == [4, 0, 1, 3]


def test_sweep_frontier_labels_every_trial_and_joins_the_frontier():
    trials = [(1e-3, 0.1, 1.0), (1e-2, 0.2, 2.0), (3e-2, 0.25, 1.5), (1e-1, 0.3, 3.0)]
    out = []
    for n, (lr, drop, gain) in enumerate(trials):
        out += rows(seed=n, step=4, sweep__lr=lr, probe__drop=drop, target__gain=gain)
    ax = visible_axes(plots.sweep_frontier(to_frame(out)))[0]
    assert sorted(t.get_text() for t in ax.texts) == ["1.0e-01", "1.0e-02", "1.0e-03", "3.0e-02"]
    front = ax.get_lines()[0]
    assert list(front.get_xdata()) == [0.1, 0.2, 0.3]  # the lr 3e-2 trial is dominated


def test_feedback_curves_have_one_panel_per_feedback_metric():
    out = []
    for seed in (0, 1):
        for day in range(3):
            out += rows(seed=seed, step=day, feedback__coverage=0.5, feedback__regret=0.1 * day,
                        train__loss=1.0)
    axes = visible_axes(plots.feedback_curves(to_frame(out)))
    assert [ax.get_title() for ax in axes] == ["feedback/coverage", "feedback/regret"]
    assert axes[0].get_xlabel() == "day"


def test_gain_drop_curves_work_for_an_llm_only_frame():
    out = []
    for seed in (0, 1):
        for step in (0, 50, 100):
            out += rows(domain="llm", experiment="mixture_toy", regime="reverse_kl", seed=seed,
                        step=step, target__gain=step / 100, probe__drop=0.0)
    axes = visible_axes(plots.gain_drop_curves(to_frame(out)))
    assert [ax.get_title() for ax in axes] == ["llm: gain", "llm: drop"]
    assert axes[0].get_xlabel() == "step"
    assert list(axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.0, 0.5, 1.0])


def test_drop_vs_control_gets_a_panel_only_in_the_domain_that_has_it():
    out = []
    for step in (0, 1, 2):
        out += rows(domain="llm", experiment="toy", step=step, target__gain=0.1, probe__drop=0.2)
        out += rows(step=step, target__gain=0.3, probe__drop=0.4, probe__drop_vs_control=0.5)
    axes = visible_axes(plots.gain_drop_curves(to_frame(out)))
    assert [ax.get_title() for ax in axes] == [
        "llm: gain", "llm: drop", "recsys: gain", "recsys: drop", "recsys: drop_vs_control"]
    assert list(axes[-1].get_lines()[0].get_ydata()) == pytest.approx([0.5, 0.5, 0.5])


def test_labels_name_the_experiment_only_when_there_are_several():
    one = to_frame(rows(target__gain=1.0))
    two = to_frame(rows(target__gain=1.0) + rows(domain="llm", experiment="toy", target__gain=1.0))
    assert plots.with_labels(one)["label"].to_list() == ["grpo"]
    assert sorted(plots.with_labels(two)["label"].to_list()) == ["exp: grpo", "toy: grpo"]


@pytest.mark.parametrize("draw", [plots.forgetting_curves, plots.cohort_auc_curves,
                                  plots.kl_drop_scatter, plots.feedback_curves,
                                  plots.sweep_frontier, plots.gain_drop_curves])
def test_absent_metrics_raise_a_clear_error(draw):
    with pytest.raises(ValueError, match="nothing to plot"):
        draw(to_frame(rows(train__loss=1.0)))
