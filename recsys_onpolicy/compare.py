"""The cross-domain view: recsys and LLM runs (several run directories or frames) in one report.

Three views, each reading only the long result schema:
- Gain/Drop per regime, one column pair per (domain, experiment), side by side (table + bars);
- KL(pi_0 || pi_t) vs drop per experiment with Pearson r and R^2 (``plots.kl_drop_scatter``);
- drop over *normalised* training progress (step / last step of each run), so 60 recsys days and
  200 LM updates share one x-axis; one panel per domain (their units differ).
Curves, bars and points are coloured by regime, the same colour in every domain and
experiment (``plots.styles_for``).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from recsys_onpolicy import plots
from recsys_onpolicy.report import (
    figure_section,
    note_html,
    page_html,
    section_html,
    summary_html,
    table_html,
    write_text_atomic,
)
from recsys_onpolicy.results import check_schema, read_metrics
from recsys_onpolicy.tables import (
    POPULATION,
    RUN_KEYS,
    format_ci,
    gain_drop_table,
    require_rows,
    split_sweeps,
)

Source = str | Path | pl.DataFrame


def load_source(source: Source, index: int) -> tuple[str, pl.DataFrame]:
    """(name for messages, frame) of a run directory, a metrics file, or a frame; a source
    without any row is refused (it would silently add nothing)."""
    if isinstance(source, pl.DataFrame):
        name, frame = f"frame #{index}", check_schema(source)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass run directories made by "
                                    "`recsys-onpolicy run` (each holding metrics.parquet)")
        file = path / "metrics.parquet" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: {path} is not a finished run directory")
        name, frame = str(path), read_metrics(file)
    if frame.height == 0:
        raise ValueError(f"{name} holds no metric rows: leave it out, or rerun it")
    return name, frame


SEED_KEYS = ("seed", "seeds")  # at any depth (the LLM toy keeps its own: mixture_toy.seed)
NOT_RESULTS = ("jobs", "description")  # top-level keys that do not change a run's results


def source_config(source: Source) -> dict | None:
    """A run directory's ``config.yaml`` without its seeds (:data:`SEED_KEYS`, at any depth) and
    the top-level keys that do not change results (:data:`NOT_RESULTS`): what must agree for two
    directories' runs to be seeds of one setting; None for other sources."""
    if isinstance(source, pl.DataFrame) or not (Path(source) / "config.yaml").is_file():
        return None
    from simulators.typed_config import read_yaml

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in SEED_KEYS}
        return [strip(v) for v in node] if isinstance(node, list) else node

    data = strip(read_yaml(Path(source) / "config.yaml"))
    return {k: v for k, v in data.items() if k not in NOT_RESULTS}


def check_poolable(named: list[tuple[str, pl.DataFrame]], configs: list[dict | None]) -> None:
    """Two sources with the same (domain, experiment) are pooled as seeds of one setting: only
    if both are run directories with the same config up to the seeds (else the table would
    average different experiments, e.g. different numbers of days, as if they were seeds)."""
    first: dict[tuple, tuple[str, dict | None]] = {}
    for (name, frame), cfg in zip(named, configs):
        for key in frame.select("domain", "experiment").unique().iter_rows():
            if key not in first:
                first[key] = (name, cfg)
                continue
            other, other_cfg = first[key]
            if cfg is None or other_cfg is None or cfg != other_cfg:
                why = ("their config.yaml differ beyond the seeds" if cfg and other_cfg else
                       "there is no config.yaml to show they are the same experiment")
                rename = ("rerun one with another name (--set experiment=NAME), or compare "
                          "them separately" if key[0] == "recsys" else "compare them separately")
                raise ValueError(
                    f"experiment {key[1]!r} ({key[0]}) is in both {other} and {name}, and "
                    f"{why}: their runs would be pooled as seeds of one setting; {rename}")


def check_disjoint(named: list[tuple[str, pl.DataFrame]]) -> None:
    """Two sources holding the same run (domain, experiment, regime, seed) cannot be told apart."""
    owner: dict[tuple, str] = {}
    for name, frame in named:
        for key in frame.select(RUN_KEYS).unique().iter_rows():
            if key in owner:
                raise ValueError(
                    f"run {dict(zip(RUN_KEYS, key))} is in both {owner[key]} and {name}: compare "
                    "runs of different experiments or seeds, or leave one of them out")
            owner[key] = name


def compare_runs(sources: Iterable[Source]) -> pl.DataFrame:
    """Concatenate several runs (run directories, metrics files or frames) after checking their
    schemas, that no run is in two sources and that an experiment in two sources is the same
    experiment (:func:`check_poolable`)."""
    sources = list(sources)
    named = [load_source(s, i) for i, s in enumerate(sources)]
    if not named:
        raise ValueError("compare needs at least one run directory")
    check_disjoint(named)
    check_poolable(named, [source_config(s) for s in sources])
    return require_rows(pl.concat([f for _, f in named], how="vertical"))


# ---------------------------------------------------------------- Gain/Drop side by side


def source_label(domain: str, experiment: str) -> str:
    return f"{domain}/{experiment}"


def side_by_side_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows = regimes; per (domain, experiment) a gain and a drop column, cells "mean [low, high]"."""
    table = gain_drop_table(frame)
    sources = table.select("domain", "experiment").unique().sort("domain", "experiment").rows()
    cells = {(r["regime"], source_label(r["domain"], r["experiment"])): r
             for r in table.iter_rows(named=True)}
    out = {"regime": sorted(table["regime"].unique().to_list())}
    for d, e in sources:
        rows = [cells.get((reg, source_label(d, e))) for reg in out["regime"]]
        for p in ("gain", "drop"):
            out[f"{source_label(d, e)} {p}"] = [
                format_ci(r[f"{p}_mean"], r[f"{p}_low"], r[f"{p}_high"]) if r else "-"
                for r in rows]
    return pl.DataFrame(out)


def gain_drop_bars(frame: pl.DataFrame) -> Figure:
    """Bars of last-step gain and drop per regime with 95% intervals; one row per domain."""
    table = regime_labels(gain_drop_table(frame))
    styles = plots.styles_for(regime_labels(frame))
    domains = sorted(table["domain"].unique().to_list())
    fig, axes = plots.grid(2 * len(domains), ncols=2)
    for i, (d, p) in enumerate((d, p) for d in domains for p in ("gain", "drop")):
        part = table.filter(pl.col("domain") == d)
        draw_bars(axes[i], part, p, [styles[r].color for r in part["label"]])
        axes[i].set(title=f"{d}: {p}", ylabel=p + (" (clicks/slate)" if d == "recsys" else ""))
    plots.suptitle(fig, "Gain and drop per regime, last step (mean over seeds, 95% interval)")
    return fig


def draw_bars(ax, part: pl.DataFrame, prefix: str, colors: list) -> None:
    mean = part[f"{prefix}_mean"].fill_null(np.nan).to_numpy()
    low, high = (part[f"{prefix}_{k}"].fill_null(np.nan).to_numpy() for k in ("low", "high"))
    err = np.nan_to_num(np.vstack([mean - low, high - mean]))  # no bar for one seed
    x = np.arange(part.height)
    ax.bar(x, mean, yerr=err, color=colors, capsize=3)
    ax.set_xticks(x, part["label"].to_list(), rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="0.6", lw=0.8)


# ---------------------------------------------------------------- progress-normalised forgetting


def normalised_progress(frame: pl.DataFrame) -> pl.DataFrame:
    """``step`` replaced by step / (last step of its run), a float in [0, 1]."""
    last = pl.col("step").max().over(RUN_KEYS)
    return frame.with_columns(
        (pl.col("step") / pl.when(last > 0).then(last).otherwise(1)).alias("step"))


def regime_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """Label = regime (prefixed by experiment only when a domain has several experiments)."""
    per_domain = frame.group_by("domain").agg(pl.col("experiment").n_unique())["experiment"]
    if (per_domain.max() or 0) <= 1:
        return frame.with_columns(pl.col("regime").alias("label"))
    return frame.with_columns(
        pl.concat_str([pl.col("experiment"), pl.lit(": "), pl.col("regime")]).alias("label"))


def progress_curves(frame: pl.DataFrame, metric: str = "probe/drop") -> Figure:
    """``metric`` over normalised training progress, one panel per domain, one line per regime."""
    plots.require(frame, metric)
    labelled = regime_labels(frame)
    styles = plots.styles_for(labelled)  # same colours as the bars
    data = normalised_progress(labelled).filter(pl.col("metric") == metric)
    domains = sorted(data["domain"].unique().to_list())
    fig, axes = plots.grid(len(domains), ncols=2)
    for ax, d in zip(axes, domains):
        plots.draw_bands(ax, plots.mean_band(data.filter(pl.col("domain") == d), metric,
                                             POPULATION), styles)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set(title=f"{d}: {metric}", xlabel="training progress (step / last step of the run)",
               ylabel=metric.split("/")[-1] + (" (clicks/slate)" if d == "recsys" else ""))
        plots.legend(ax)
    plots.suptitle(fig, f"{metric} over normalised training progress (mean over seeds, 95% band)")
    return fig


# ---------------------------------------------------------------- the page


def comparison_html(frame: pl.DataFrame, title: str) -> str:
    runs, _ = split_sweeps(frame)
    wide = side_by_side_table(runs) if runs.height else pl.DataFrame()
    table = (table_html(wide.columns, [list(r) for r in wide.iter_rows()]) if wide.height
             else note_html("Skipped: no ordinary runs (only sweep trials)."))
    parts = [
        section_html("summary", "What is compared", summary_html(frame)),
        section_html("table", "Gain / Drop per regime and domain", table),
        figure_section("bars", "Gain and drop side by side", runs, gain_drop_bars,
                       None if runs.height else "no ordinary runs",
                       "Same regime, same colour in every domain. Units differ by domain."),
        figure_section("kl", "KL to the base policy vs drop, per domain", regime_labels(frame),
                       plots.kl_drop_scatter, _missing(frame, "probe/kl_to_base", "probe/drop"),
                       "One point per run or sweep trial (last step), paired controls left out; "
                       "one panel per experiment, with its Pearson r and R^2 in the title."),
        figure_section("progress", "Drop over normalised training progress", runs,
                       progress_curves, _missing(runs, "probe/drop"),
                       "Drop against step / last step of each run, so both domains share x."),
    ]
    return page_html(title, parts, kind="comparison")


def _missing(frame: pl.DataFrame, *metrics: str) -> str | None:
    absent = [m for m in metrics if frame.filter(pl.col("metric") == m).height == 0]
    return f"no {', '.join(absent)} rows in these runs" if absent else None


def write_comparison(sources: Iterable[Source], out_path: str | Path,
                     title: str = "recsys vs LLM: on-policy forgetting side by side") -> Path:
    """Write the cross-domain HTML (self-contained, atomic) for run directories and/or frames."""
    return write_text_atomic(comparison_html(compare_runs(sources), title), out_path)
