"""Summary tables over the long result schema: the Gain/Drop/forgetting table and its helpers.

Everything here reads only the long schema of ``recsys_onpolicy.results`` (``domain, experiment,
regime, seed, step, metric, value, group``) and the metric names of ``docs/interfaces.md``.
A *run* is one (domain, experiment, regime, seed). In the table, a metric's value for a run is
the one at the run's final step (averaged over the selected groups at that step, e.g. several
removed cohorts; NaN when the run has none there, e.g. an AUC left out as undefined); the table
then gives the mean and 95% Student-t interval over seeds.

Sweep trials (runs with a ``sweep/lr`` row, seed = trial number) are not seeds of one setting:
:func:`split_sweeps` separates them, and the table and the curves use only the other runs.
"""
from __future__ import annotations

import math

import polars as pl

from recsys_onpolicy.metrics import mean_ci95

RUN_KEYS = ["domain", "experiment", "regime", "seed"]
SETTING_KEYS = ["domain", "experiment", "regime"]
SWEEP_METRIC = "sweep/lr"

# group selectors: which rows of a metric count for a run's value
ANY_GROUP = None
POPULATION = pl.col("group").is_null()
TRAIN_OR_POPULATION = pl.col("group").is_null() | (pl.col("group") == "train")

# column prefix -> (metric, group selector, always shown)
TABLE_METRICS: dict[str, tuple[str, pl.Expr | None, bool]] = {
    "gain": ("target/gain", POPULATION, True),
    "drop": ("probe/drop", POPULATION, True),
    "drop_vs_control": ("probe/drop_vs_control", POPULATION, False),
    "forgetting": ("probe/forgetting", ANY_GROUP, False),
    "forgetting_vs_control": ("probe/forgetting_vs_control", ANY_GROUP, False),
    "kl_to_base": ("probe/kl_to_base", TRAIN_OR_POPULATION, False),
}
HEADERS = {"gain": "gain", "drop": "drop", "drop_vs_control": "drop vs control",
           "forgetting": "forgetting",
           "forgetting_vs_control": "forgetting vs control", "kl_to_base": "KL to base"}


def require_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Raise a clear ValueError for an empty metrics frame (nothing to summarise)."""
    if frame.height == 0:
        raise ValueError(
            "the metrics frame is empty: no run wrote any metric; check that the run finished "
            "and that metrics.parquet is the right file"
        )
    return frame


def has_metric(frame: pl.DataFrame, metric: str) -> bool:
    return frame.filter(pl.col("metric") == metric).height > 0


def split_sweeps(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(ordinary runs, sweep-trial runs): a run is a sweep trial if it has a ``sweep/lr`` row."""
    trials = frame.filter(pl.col("metric") == SWEEP_METRIC).select(RUN_KEYS).unique()
    return (frame.join(trials, on=RUN_KEYS, how="anti"),
            frame.join(trials, on=RUN_KEYS, how="semi"))


def select_metric(frame: pl.DataFrame, metric: str, groups: pl.Expr | None = None) -> pl.DataFrame:
    """Rows of one metric, restricted to the groups the selector keeps."""
    rows = frame.filter(pl.col("metric") == metric)
    return rows if groups is None else rows.filter(groups)


def per_seed_curve(frame: pl.DataFrame, metric: str, groups: pl.Expr | None = None) -> pl.DataFrame:
    """One value per (run, step): the metric averaged over the selected groups."""
    rows = select_metric(frame, metric, groups)
    return rows.group_by(RUN_KEYS + ["step"]).agg(pl.col("value").mean()).sort(RUN_KEYS + ["step"])


def last_per_run(frame: pl.DataFrame, metric: str, groups: pl.Expr | None = None) -> pl.DataFrame:
    """One value per run: the metric at the run's last step for it (columns RUN_KEYS, step, value)."""
    curve = per_seed_curve(frame, metric, groups)
    return curve.filter(pl.col("step") == pl.col("step").max().over(RUN_KEYS))


def _ci_columns(values: list[float] | None, prefix: str) -> dict[str, float | None]:
    """{prefix_mean, prefix_low, prefix_high}; None when there is no value."""
    stats = mean_ci95(values) if values else (None, None, None)
    return {f"{prefix}_{k}": v for k, v in zip(("mean", "low", "high"), stats)}


def table_columns(frame: pl.DataFrame) -> list[str]:
    """Column prefixes shown for this frame: gain and drop always, the others when present."""
    return [p for p, (m, _, always) in TABLE_METRICS.items() if always or has_metric(frame, m)]


def gain_drop_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per (domain, experiment, regime): n seeds and mean / 95% t-interval of each last-step metric.

    Columns: domain, experiment, regime, n_seeds, then ``<p>_mean, <p>_low, <p>_high`` for each
    prefix of :func:`table_columns` (gain, drop, and drop_vs_control, forgetting,
    forgetting_vs_control, kl_to_base when present). A single seed gives a NaN interval; a
    metric absent for a setting gives nulls.
    Sweep trials are left out (see :func:`split_sweeps`).
    """
    runs, _ = split_sweeps(require_rows(frame))
    settings = runs.group_by(SETTING_KEYS).agg(pl.col("seed").n_unique().alias("n_seeds"))
    prefixes = table_columns(runs)
    per_metric = {p: _values_by_setting(runs, *TABLE_METRICS[p][:2]) for p in prefixes}
    rows = []
    for s in settings.sort(SETTING_KEYS).iter_rows(named=True):
        key = tuple(s[k] for k in SETTING_KEYS)
        for p in prefixes:
            s.update(_ci_columns(per_metric[p].get(key), p))
        rows.append(s)
    schema = {**dict(zip(SETTING_KEYS, [pl.Utf8] * 3)), "n_seeds": pl.Int64}
    schema |= {f"{p}_{k}": pl.Float64 for p in prefixes for k in ("mean", "low", "high")}
    return pl.DataFrame(rows, schema=schema)


def _values_by_setting(frame: pl.DataFrame, metric: str, groups) -> dict[tuple, list[float]]:
    """(domain, experiment, regime) -> the metric's value of each of its seeds at the run's
    final step (its last step with any row; runs may stop at different steps); a seed without
    a value there gives NaN, never an earlier step's value. Settings without the metric are
    left out."""
    curve = per_seed_curve(frame, metric, groups)
    final = frame.group_by(RUN_KEYS).agg(pl.col("step").max())
    at_last = (final.join(curve.select(SETTING_KEYS).unique(), on=SETTING_KEYS)
               .join(curve, on=RUN_KEYS + ["step"], how="left")
               .group_by(SETTING_KEYS).agg(pl.col("value").fill_null(math.nan)))
    return {tuple(r[k] for k in SETTING_KEYS): list(r["value"])
            for r in at_last.iter_rows(named=True)}


def format_ci(mean: float | None, low: float | None, high: float | None) -> str:
    """``mean [low, high]`` with 4 significant digits; ``-`` when absent, ``[n/a]`` for one seed.

    A NaN mean (some seed has no value at the last step, e.g. an AUC on a single-class probe
    is not written) prints ``nan``.
    """
    if mean is None:
        return "-"
    if math.isnan(mean):
        return "nan"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.4g} [n/a]"
    return f"{mean:.4g} [{low:.4g}, {high:.4g}]"


def table_cells(df: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows of strings) of a :func:`gain_drop_table` frame; shared with the HTML report."""
    prefixes = [p for p in TABLE_METRICS if f"{p}_mean" in df.columns]
    header = ["domain", "experiment", "regime", "n"] + [HEADERS[p] for p in prefixes]
    rows = [[r["domain"], r["experiment"], r["regime"], str(r["n_seeds"])]
            + [format_ci(r[f"{p}_mean"], r[f"{p}_low"], r[f"{p}_high"]) for p in prefixes]
            for r in df.iter_rows(named=True)]
    return header, rows


def format_table(df: pl.DataFrame) -> str:
    """The table as aligned text for the terminal; cells read ``mean [low, high]`` (95% t)."""
    header, rows = table_cells(df)
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows])
