"""The report's figures: each a pure function, long-schema frame in, matplotlib Figure out.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global state, no window):
saving one renders it with the Agg backend. Curves are the mean over seeds with a band for the
95% Student-t interval (``recsys_onpolicy.metrics.mean_ci95``; one seed draws no band), cut to
the values the metric can take (:data:`METRIC_RANGE`: with 2 seeds, t = 12.7 sends an AUC band
far outside [0, 1]). Lines are
labelled by regime (prefixed by experiment / domain when the frame holds several). A regime has
one colour in every figure, experiment and domain; the experiment / domain prefix is told apart
by line style (curves) and marker (points) (:func:`styles_for`). A function whose metrics are
absent raises ValueError naming them; the report checks presence first and skips the section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from recsys_onpolicy.metrics import mean_ci95, pearson_r2
from recsys_onpolicy.regimes.config import PRESETS
from recsys_onpolicy.results import CONTROL_SUFFIX
from recsys_onpolicy.tables import (
    POPULATION,
    RUN_KEYS,
    SWEEP_METRIC,
    TRAIN_OR_POPULATION,
    has_metric,
    last_per_run,
    per_seed_curve,
)

PANEL = (4.4, 3.3)  # inches per subplot
MAX_PANELS = 12

# ---------------------------------------------------------------- shared helpers


def with_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``label``: the regime, prefixed by the experiment when the frame has several, and by
    the domain when one experiment name occurs in several domains.

    A frame that already has labels keeps them (a subset keeps the colours of the whole).
    """
    if "label" in frame.columns:
        return frame
    label = pl.col("regime")
    if frame["experiment"].n_unique() > 1:
        label = pl.concat_str([pl.col("experiment"), pl.lit(": "), label])
    if frame.select("domain", "experiment").n_unique() > frame["experiment"].n_unique():
        label = pl.concat_str([pl.col("domain"), pl.lit(" "), label])
    return frame.with_columns(label.alias("label"))


@dataclass(frozen=True)
class Style:
    """How one label is drawn: its regime's colour, its experiment's line style and marker."""

    color: tuple
    line: str = "-"
    marker: str = "o"


LINES = ("-", "--", "-.")  # not ":", the oracle's
MARKERS = ("o", "s", "^", "D", "v", "P")


def colors_for(names) -> dict[str, tuple]:
    """A colour per name. The regime presets (``PRESETS``, which include every LLM preset name)
    have fixed tab10 colours, the same in every report and comparison; other names (custom or
    variant regimes) take, in sorted order, the tab10 colours no preset of ``names`` uses, then
    tab20's light ones (cycling)."""
    from matplotlib import colormaps

    names = sorted(set(names))
    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    fixed = {n: tab10(i) for i, n in enumerate(PRESETS)}  # 10 presets, 10 colours
    taken = {fixed[n] for n in names if n in fixed}
    spare = [c for c in map(tab10, range(10)) if c not in taken] + [
        tab20(i) for i in range(1, 20, 2)]
    others = [n for n in names if n not in fixed]
    return {n: fixed[n] for n in names if n in fixed} | {
        n: spare[i % len(spare)] for i, n in enumerate(others)}


def styles_for(frame: pl.DataFrame) -> dict[str, Style]:
    """A style per label of the (labelled) frame: the colour of its regime, so a regime looks the
    same in every experiment and domain, and the line style / marker of its (domain,
    experiment), in sorted order. Build it from the whole frame, so every figure agrees."""
    rows = with_labels(frame).select("label", "regime", "domain", "experiment").unique()
    colors = colors_for(rows["regime"])
    sources = sorted(set(zip(rows["domain"], rows["experiment"])))
    out = {}
    for label, regime, domain, experiment in rows.sort(["domain", "experiment"]).iter_rows():
        i = sources.index((domain, experiment))
        out.setdefault(label, Style(colors[regime], LINES[i % len(LINES)],
                                    MARKERS[i % len(MARKERS)]))
    return out


def require(frame: pl.DataFrame, *metrics: str) -> None:
    missing = [m for m in metrics if not has_metric(frame, m)]
    if missing:
        raise ValueError(f"the frame has no rows for metric(s) {missing}: nothing to plot")


def step_unit(frame: pl.DataFrame) -> str:
    """x-axis label: recsys steps are days, LLM steps are updates."""
    domains = set(frame["domain"].unique().to_list())
    if domains == {"recsys"}:
        return "day"
    return "step (recsys: day)" if "recsys" in domains else "update step"


def grid(n: int, ncols: int = 3, sharex: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels in rows of ``ncols``; unused panels are hidden."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    width = max(PANEL[0] * ncols, 6.4)  # room for the suptitle above a single panel
    fig = Figure(figsize=(width, PANEL[1] * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


# The values a metric can take (bands are cut to them; see the module docstring). Shares, AUCs
# and Gini lie in [0, 1]; KL, entropy, regret (the oracle slate is the best one), norms and
# expected clicks are >= 0.
UNIT = (0.0, 1.0)
NON_NEGATIVE = (0.0, math.inf)
METRIC_RANGE: dict[str, tuple[float, float]] = {
    **dict.fromkeys(["probe/auc", "probe/auc_oracle", "feedback/coverage",
                     "feedback/exposure_gini", "drift/share_unchanged",
                     "drift/share_unchanged_bf16", "drift/rows_touched"], UNIT),
    **dict.fromkeys(["probe/kl_to_base", "feedback/exposure_entropy", "feedback/regret",
                     "drift/dense_rel_l2", "drift/sparse_rel_l2", "target/expected_clicks"],
                    NON_NEGATIVE),
}


def mean_band(frame: pl.DataFrame, metric: str, groups: pl.Expr | None = None) -> pl.DataFrame:
    """Per (label, step): mean over seeds and the 95% t-interval (columns mean, low, high, n),
    the interval cut to :data:`METRIC_RANGE`."""
    per_seed = per_seed_curve(frame, metric, groups).join(
        with_labels(frame).select(RUN_KEYS + ["label"]).unique(), on=RUN_KEYS)
    lists = per_seed.group_by(["label", "step"]).agg(pl.col("value")).sort(["label", "step"])
    stats = [mean_ci95(v) for v in lists["value"]]
    lo, hi = METRIC_RANGE.get(metric, (-math.inf, math.inf))
    return lists.drop("value").with_columns(
        pl.Series("mean", [s[0] for s in stats], pl.Float64),
        pl.Series("low", [max(s[1], lo) for s in stats], pl.Float64),
        pl.Series("high", [min(s[2], hi) for s in stats], pl.Float64),
        pl.Series("n", [len(v) for v in lists["value"]], pl.Int64),
    )


def draw_bands(ax: Axes, band: pl.DataFrame, styles: dict[str, Style]) -> None:
    """One line (mean) and one shaded band (95% interval) per label of a :func:`mean_band` frame."""
    for (label,), part in band.group_by(["label"], maintain_order=True):
        s = styles[label]
        ax.plot(part["step"], part["mean"], s.line, color=s.color, label=label, lw=1.6)
        ax.fill_between(part["step"], part["low"], part["high"], color=s.color, alpha=0.18, lw=0)


def suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=11)


def legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)


# ---------------------------------------------------------------- forgetting and cohort AUC


def removed_cohorts(frame: pl.DataFrame) -> set[str]:
    """Groups (``c<k>``) of the removed cohorts: those with ``probe/forgetting`` rows."""
    return set(frame.filter(pl.col("metric") == "probe/forgetting")["group"].drop_nulls())


def removal_days(frame: pl.DataFrame) -> list[int]:
    """Day D of each run with forgetting rows (its first forgetting step), distinct and sorted."""
    rows = frame.filter(pl.col("metric") == "probe/forgetting")
    return sorted(rows.group_by(RUN_KEYS).agg(pl.col("step").min())["step"].unique().to_list())


def mark_removal(ax: Axes, days: list[int]) -> None:
    for i, d in enumerate(days):
        ax.axvline(d, color="0.3", ls=":", lw=1, label="removal day D" if i == 0 else None)


def forgetting_curves(frame: pl.DataFrame) -> Figure:
    """Forgetting of the removed cohort(s) per regime over days; control-adjusted panel if present."""
    require(frame, "probe/forgetting")
    metrics = ["probe/forgetting"] + (
        ["probe/forgetting_vs_control"] if has_metric(frame, "probe/forgetting_vs_control") else [])
    styles = styles_for(frame)
    fig, axes = grid(len(metrics), ncols=2)
    titles = {"probe/forgetting": "forgetting of the removed cohort",
              "probe/forgetting_vs_control": "forgetting minus paired control"}
    for ax, m in zip(axes, metrics):
        draw_bands(ax, mean_band(frame, m), styles)
        ax.axhline(0, color="0.6", lw=0.8)
        mark_removal(ax, removal_days(frame))
        ax.set(title=titles[m], xlabel="day", ylabel="AUC(day D) - AUC(day t)")
    legend(axes[0])
    suptitle(fig, "Forgetting (mean over seeds, band = 95% t-interval; > 0 means worse)")
    return fig


def cohort_order(frame: pl.DataFrame) -> list[str]:
    """Cohorts with AUC rows, removed ones first, then by number (c2 before c10)."""
    cohorts = frame.filter(pl.col("metric") == "probe/auc")["group"].drop_nulls().unique().to_list()
    removed = removed_cohorts(frame)

    def key(g: str) -> tuple:
        return g not in removed, int(g[1:]) if g[1:].isdigit() else math.inf, g
    return sorted(cohorts, key=key)


def cohort_auc_curves(frame: pl.DataFrame) -> Figure:
    """Cohort-holdout AUC per cohort over days, per regime, with the oracle AUC as the ceiling.

    The oracle is each run's own (with dynamics on, every regime's world moves its own way): one
    black dashed line where all labels share it, else one thin dashed line per label in its
    colour."""
    require(frame, "probe/auc")
    cohorts = cohort_order(frame)
    shown = cohorts[:MAX_PANELS]
    removed = removed_cohorts(frame)
    styles = styles_for(frame)
    fig, axes = grid(len(shown), sharex=True)
    for ax, c in zip(axes, shown):
        in_cohort = pl.col("group") == c
        draw_bands(ax, mean_band(frame, "probe/auc", in_cohort), styles)
        if has_metric(frame.filter(in_cohort), "probe/auc_oracle"):
            draw_oracle(ax, mean_band(frame, "probe/auc_oracle", in_cohort), styles)
        if c in removed:
            mark_removal(ax, removal_days(frame.filter(in_cohort)))
        ax.set(title=f"cohort {c}" + (" (removed)" if c in removed else ""),
               xlabel="day", ylabel="AUC")
    legend(axes[0])
    more = f"; showing {len(shown)} of {len(cohorts)} cohorts" if len(shown) < len(cohorts) else ""
    suptitle(fig, f"Cohort-holdout AUC (mean over seeds, 95% band){more}")
    return fig


def draw_oracle(ax: Axes, band: pl.DataFrame, styles: dict[str, Style]) -> None:
    """The oracle ceiling of a :func:`mean_band` frame: one line if every label has the same
    curve, else one per label."""
    curves = {label: part.sort("step") for (label,), part in band.group_by(["label"])}
    first = next(iter(curves.values()))
    shared = all(p["step"].equals(first["step"])
                 and np.allclose(p["mean"].to_numpy(), first["mean"].to_numpy(), rtol=0, atol=1e-9)
                 for p in curves.values())
    # dotted (":"), never a line style of the labels' own curves (paired controls are dashed)
    if shared:
        ax.plot(first["step"], first["mean"], ":", color="k", lw=1.3, label="oracle ceiling")
        return
    for label, part in sorted(curves.items()):
        ax.plot(part["step"], part["mean"], ":", color=styles[label].color, lw=1.3,
                label=f"{label} oracle")


# ---------------------------------------------------------------- KL vs drop


def kl_drop_points(frame: pl.DataFrame) -> pl.DataFrame:
    """One point per run: last KL to base (train cohorts / LLM prompts) and last drop, labelled.
    Paired control runs are left out: they still train on the held-out cohorts, so their drop
    is not forgetting."""
    labels = with_labels(frame).select(RUN_KEYS + ["label"]).unique()  # the whole frame's
    runs = frame.filter(~pl.col("experiment").str.ends_with(CONTROL_SUFFIX))
    kl = last_per_run(runs, "probe/kl_to_base", TRAIN_OR_POPULATION).select(
        RUN_KEYS + [pl.col("value").alias("kl")])
    drop = last_per_run(runs, "probe/drop", POPULATION).select(
        RUN_KEYS + [pl.col("value").alias("drop")])
    return kl.join(drop, on=RUN_KEYS).join(labels, on=RUN_KEYS).sort(RUN_KEYS)


def fit_title(where: str, x, y, left_out: int = 0) -> str:
    r, r2 = pearson_r2(x, y)
    stat = "r = n/a (needs >= 3 points with spread)" if math.isnan(r) else (
        f"Pearson r = {r:.3f}, R² = {r2:.3f}")
    extra = f" (+{left_out} non-finite, left out)" if left_out else ""
    return f"{where}: {stat}, n = {len(x)}{extra}"


def kl_drop_scatter(frame: pl.DataFrame) -> Figure:
    """Final KL(pi_0 || pi_t) vs final drop, one point per run, with a fit per panel.

    One panel per (domain, experiment): a fit across experiments (a toy and an LM, two worlds)
    would measure the difference between them, not the forgetting law. Points with a
    non-finite KL or drop are left out of the panel and counted in its title."""
    require(frame, "probe/kl_to_base", "probe/drop")
    points = kl_drop_points(frame)
    if points.height == 0:
        raise ValueError("no run has both probe/kl_to_base and probe/drop: nothing to plot")
    styles = styles_for(frame)  # the whole frame's, as in the other figures
    panels = points.select("domain", "experiment").unique().sort("domain", "experiment").rows()
    fig, axes = grid(len(panels), ncols=2)
    for ax, (d, e) in zip(axes, panels):
        part = points.filter((pl.col("domain") == d) & (pl.col("experiment") == e))
        finite = part.filter(pl.col("kl").is_finite() & pl.col("drop").is_finite())
        for (label,), p in finite.group_by(["label"], maintain_order=True):
            s = styles[label]
            ax.scatter(p["kl"], p["drop"], color=s.color, marker=s.marker, label=label, s=28)
        draw_fit(ax, finite["kl"].to_numpy(), finite["drop"].to_numpy())
        ax.set(title=fit_title(f"{d} / {e}" if len(panels) > 1 else d, finite["kl"],
                               finite["drop"], part.height - finite.height),
               xlabel="KL(pi_0 || pi_t) on training contexts (nats)",
               ylabel="drop on held-out " + ("cohorts (clicks/slate)" if d == "recsys" else "tasks"))
        legend(ax)
    suptitle(fig, "Does KL to the base policy predict forgetting? (last step of each run or trial)")
    return fig


def draw_fit(ax: Axes, x: np.ndarray, y: np.ndarray) -> None:
    """Least-squares line through the points when r is defined (>= 3 points with spread)."""
    if len(x) < 3 or np.ptp(x) == 0:
        return
    slope, icpt = np.polyfit(x, y, 1)
    xs = np.linspace(x.min(), x.max(), 2)
    ax.plot(xs, icpt + slope * xs, color="0.4", lw=1, ls="--", label="least squares")


# ---------------------------------------------------------------- generic curves


PROBE_GROUPS = ("train", "heldout")


def metric_panels(frame: pl.DataFrame, metric: str) -> list[tuple[str, pl.Expr | None]]:
    """(title, group selector) of the panels of one metric: never an average of unlike groups.

    - no groups: one panel;
    - ``train`` / ``heldout``: one panel each;
    - cohorts ``c<k>`` of a removal (cohorts with ``probe/forgetting`` rows): the removed
      cohorts and the others, each averaged over its cohorts; a removal whose cohorts the frame
      cannot name (``heldout`` rows but no forgetting rows, e.g. without the AUC probe): one
      panel per cohort;
    - other groups (cohorts without a removal, LLM tasks): one panel, mean over groups.
    """
    groups = set(frame.filter(pl.col("metric") == metric)["group"].drop_nulls().to_list())
    if not groups:
        return [(metric, None)]
    if groups <= set(PROBE_GROUPS):
        return [(f"{metric} [{g}]", pl.col("group") == g) for g in PROBE_GROUPS if g in groups]
    removed = removed_cohorts(frame)
    if removed & groups and groups - removed:
        inside = pl.col("group").is_in(sorted(removed))
        return [(f"{metric} [removed cohorts]", inside),
                (f"{metric} [other cohorts]", pl.col("group").is_not_null() & ~inside)]
    if not removed and (frame["group"] == "heldout").any():
        return [(f"{metric} [{g}]", pl.col("group") == g)
                for g in sorted(groups, key=lambda g: (len(g), g))]
    return [(f"{metric} (mean over groups)", None)]


def metric_curves(frame: pl.DataFrame, metrics: list[str], title: str) -> Figure:
    """Panels of metrics over steps (:func:`metric_panels`), mean over seeds with a 95% band
    per regime."""
    require(frame, *metrics)
    panels = [(m, t, sel) for m in metrics for t, sel in metric_panels(frame, m)]
    shown = panels[:MAX_PANELS]
    styles = styles_for(frame)
    fig, axes = grid(len(shown))
    for ax, (m, panel_title, groups) in zip(axes, shown):
        draw_bands(ax, mean_band(frame, m, groups), styles)
        ax.set(title=panel_title, xlabel=step_unit(frame.filter(pl.col("metric") == m)),
               ylabel=m.split("/", 1)[-1])
    # the legend on the panel with the most labels (a metric may exist for some runs only)
    legend(max(axes[:len(shown)], key=lambda a: len(a.get_legend_handles_labels()[1])))
    more = f"; showing {len(shown)} of {len(panels)} panels" if len(shown) < len(panels) else ""
    suptitle(fig, f"{title} (mean over seeds, 95% band){more}")
    return fig


def metrics_with_prefix(frame: pl.DataFrame, prefix: str) -> list[str]:
    return sorted(m for m in frame["metric"].unique().to_list() if m.startswith(prefix))


def feedback_curves(frame: pl.DataFrame) -> Figure:
    """Every ``feedback/*`` metric over days, per regime."""
    metrics = metrics_with_prefix(frame, "feedback/")
    if not metrics:
        raise ValueError("the frame has no feedback/* metrics: nothing to plot")
    return metric_curves(frame, metrics, "Feedback loop")


GAIN_DROP = ("target/gain", "probe/drop", "probe/drop_vs_control")


def gain_drop_curves(frame: pl.DataFrame) -> Figure:
    """Gain, drop and (with paired controls) drop vs control over training per regime, one row
    per domain with the metrics that domain has (works for any domain/toy)."""
    metrics = [m for m in GAIN_DROP if has_metric(frame, m)]
    if not metrics:
        raise ValueError("the frame has no target/gain or probe/drop rows: nothing to plot")
    domains = sorted(frame.filter(pl.col("metric").is_in(metrics))["domain"].unique().to_list())
    styles = styles_for(frame)
    ncols = len(metrics)
    fig, axes = grid(len(domains) * ncols, ncols=ncols)
    labelled = with_labels(frame)
    for row, d in enumerate(domains):
        part = labelled.filter(pl.col("domain") == d)
        for col, m in enumerate(metrics):
            ax = axes[row * ncols + col]
            if not has_metric(part, m):
                ax.set_visible(False)
                continue
            draw_bands(ax, mean_band(part, m, POPULATION), styles)
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set(title=f"{d}: {m.split('/')[-1]}", xlabel="day" if d == "recsys" else "step",
                   ylabel=m.split("/")[-1] + (" (clicks/slate)" if d == "recsys" else ""))
    legend(axes[0])
    suptitle(fig, "Gain and drop over training (mean over seeds, 95% band)")
    return fig


# ---------------------------------------------------------------- sweep frontier


def pareto_front(drop: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower drop, higher gain), ordered by drop."""
    order = np.lexsort((-gain, drop))  # by drop, ties: higher gain first
    keep, best = [], -np.inf
    for i in order:
        if gain[i] > best:
            keep.append(i)
            best = gain[i]
    return np.array(keep, dtype=int)


def sweep_points(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per sweep trial: domain, experiment, regime, seed (trial), lr, gain, drop."""
    cols = {"lr": (SWEEP_METRIC, None), "gain": ("target/gain", POPULATION),
            "drop": ("probe/drop", POPULATION)}
    out = None
    for name, (m, groups) in cols.items():
        part = last_per_run(frame, m, groups).select(RUN_KEYS + [pl.col("value").alias(name)])
        out = part if out is None else out.join(part, on=RUN_KEYS)
    return out.sort(RUN_KEYS)


def sweep_frontier(frame: pl.DataFrame) -> Figure:
    """Gain vs drop of every sweep trial, labelled by learning rate, with each regime's frontier."""
    require(frame, SWEEP_METRIC, "target/gain", "probe/drop")
    points = sweep_points(frame)
    colors = colors_for(frame["regime"])  # the same regime colours as every other figure
    domains = sorted(points["domain"].unique().to_list())
    fig, axes = grid(len(domains), ncols=2)
    for ax, d in zip(axes, domains):
        in_domain = points.filter(pl.col("domain") == d)
        for (regime,), p in in_domain.group_by(["regime"], maintain_order=True):
            draw_frontier(ax, p, colors[regime], regime)
        ax.set(title=f"{d}: learning-rate sweep", xlabel="drop (lower is better)",
               ylabel="gain (higher is better)")
        legend(ax)
    suptitle(fig, "Gain/Drop trade-off: one point per trial (lr), line = Pareto frontier")
    return fig


def draw_frontier(ax: Axes, p: pl.DataFrame, color, regime: str) -> None:
    drop, gain = p["drop"].to_numpy(), p["gain"].to_numpy()
    ax.scatter(drop, gain, color=color, s=24, label=regime)
    for x, y, lr in zip(drop, gain, p["lr"]):
        ax.annotate(f"{lr:.1e}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(drop, gain)
    ax.plot(drop[front], gain[front], "-", color=color, lw=1.2)
