"""The run report: one self-contained HTML file (figures embedded as base64 PNGs, no external assets).

Reads only the long result schema. Sections, in order: a summary of what the frame holds, the
Gain/Drop/forgetting table (mean and 95% t-interval over seeds), then one figure per kind of
result the frame contains (gain/drop curves, forgetting, cohort AUC, KL vs drop, feedback loop,
parameter drift, the learning-rate sweep frontier, any other metrics) and the config used.
A section whose metrics are absent is replaced by a one-line note, never an error.
"""
from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from recsys_onpolicy import plots
from recsys_onpolicy.results import check_schema, read_metrics
from recsys_onpolicy.tables import (
    SWEEP_METRIC,
    gain_drop_table,
    has_metric,
    require_rows,
    split_sweeps,
    table_cells,
)
from simulators.atomic import atomic_write

DPI = 100
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; } img { max-width: 100%; } .note { color: #777; font-style: italic; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""

# ---------------------------------------------------------------- HTML pieces (shared with compare)


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg), without the software tag (no URL in the file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def figure_html(fig: Figure, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note_html(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def section_html(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def page_html(title: str, sections: list[str], kind: str = "report") -> str:
    """The page; ``kind`` ("report", "comparison") is written into a ``<meta>`` tag, so that a
    later write can tell what an existing file is (:func:`page_kind`)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="recsys-onpolicy" content="{html.escape(kind)}">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def page_kind(path: str | Path) -> str | None:
    """The ``kind`` of a page written by :func:`page_html` ("report", "comparison"), or None
    for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="replace")
    found = re.search(r'<meta name="recsys-onpolicy" content="([a-z]+)">', head)
    return found.group(1) if found else None


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 text atomically (:func:`simulators.atomic.atomic_write`): no half file is
    ever visible."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def figure_section(anchor: str, title: str, frame: pl.DataFrame, draw: Callable,
                   missing: str | None, caption: str) -> str:
    """A figure section, or the one-line note saying why it is skipped."""
    if missing:
        return section_html(anchor, title, note_html(f"Skipped: {missing}."))
    try:
        body = figure_html(draw(frame), title) + f"<p>{html.escape(caption)}</p>"
    except ValueError as e:  # data the figure cannot use: say so instead of failing the report
        body = note_html(f"Not drawn: {e}")
    return section_html(anchor, title, body)


# ---------------------------------------------------------------- the run report's sections


@dataclass(frozen=True)
class FigureSection:
    anchor: str
    title: str
    draw: Callable[[pl.DataFrame], Figure]
    missing: Callable[[pl.DataFrame], str | None]  # why the section is skipped, None if drawn
    caption: str
    data: str = "runs"  # which runs it reads: "runs" (not sweep trials), "sweeps" or "all"


def needs(*metrics: str) -> Callable[[pl.DataFrame], str | None]:
    def missing(frame: pl.DataFrame) -> str | None:
        absent = [m for m in metrics if not has_metric(frame, m)]
        return f"no {', '.join(absent)} rows in this result" if absent else None
    return missing


def needs_any(*metrics: str) -> Callable[[pl.DataFrame], str | None]:
    def missing(frame: pl.DataFrame) -> str | None:
        return None if any(has_metric(frame, m) for m in metrics) else (
            f"none of {', '.join(metrics)} in this result")
    return missing


def needs_prefix(prefix: str) -> Callable[[pl.DataFrame], str | None]:
    return lambda f: None if plots.metrics_with_prefix(f, prefix) else f"no {prefix}* metrics"


# metrics a dedicated section shows in full (probe/kl_to_base is not: the scatter shows only
# its last training-cohort value, so its curves per group go to "Other metrics")
COVERED = ("target/gain", "probe/drop", "probe/drop_vs_control", "probe/forgetting",
           "probe/forgetting_vs_control", "probe/auc", "probe/auc_oracle", SWEEP_METRIC)


def other_metrics(frame: pl.DataFrame) -> list[str]:
    """Metrics no dedicated section shows (train/*, probe/accuracy, a toy's own metrics, ...)."""
    return sorted(m for m in frame["metric"].unique().to_list()
                  if m not in COVERED and not m.startswith(("feedback/", "drift/")))


SECTIONS = [
    FigureSection("curves", "Gain and drop over training", plots.gain_drop_curves,
                  needs_any("target/gain", "probe/drop"),
                  "Gain: target metric now minus at step 0 on the trained cohorts / target task. "
                  "Drop: the same metric's fall on held-out cohorts / non-target tasks (dashed: "
                  "the paired control runs, which keep training on them). Drop vs control: the "
                  "removal run's drop minus its control's."),
    FigureSection("forgetting", "Forgetting of the removed cohort", plots.forgetting_curves,
                  needs("probe/forgetting"),
                  "Forgetting = AUC(day D) - AUC(day t) of the cohort removed from training on day "
                  "D; the right panel subtracts the paired control run where it is not removed."),
    FigureSection("auc", "Cohort-holdout AUC", plots.cohort_auc_curves, needs("probe/auc"),
                  "AUC of the model's score on uniform-probe impressions per cohort; dotted: the "
                  "oracle AUC of the true click probabilities on the same impressions."),
    FigureSection("kl", "KL to the base policy vs drop", plots.kl_drop_scatter,
                  needs("probe/kl_to_base", "probe/drop"),
                  "One point per run or sweep trial (last step), paired controls left out; one "
                  "panel and fit per experiment. The forgetting law predicts a positive slope.",
                  data="all"),
    FigureSection("feedback", "Feedback loop", plots.feedback_curves, needs_prefix("feedback/"),
                  "Exposure concentration, coverage, diversity, homogenisation and regret by day."),
    FigureSection("drift", "Parameter drift",
                  lambda f: plots.metric_curves(f, plots.metrics_with_prefix(f, "drift/"),
                                                "Parameter drift vs pi_0"),
                  needs_prefix("drift/"), "Share of unchanged parameters and relative L2 change."),
    FigureSection("sweep", "Learning-rate sweep frontier", plots.sweep_frontier,
                  needs(SWEEP_METRIC, "target/gain", "probe/drop"),
                  "Each point is one trial, labelled by its learning rate; the line joins the "
                  "trials no other trial beats on both gain and drop.", data="sweeps"),
    FigureSection("other", "Other metrics",
                  lambda f: plots.metric_curves(f, other_metrics(f), "Other metrics"),
                  lambda f: None if other_metrics(f) else "every metric is shown above",
                  "Training statistics and any metric without a dedicated section (KL to base "
                  "over days for the training and the held-out cohorts among them); one panel "
                  "per group: train and held-out, removed and other cohorts are never averaged."),
]


def summary_html(frame: pl.DataFrame) -> str:
    """One row per (domain, experiment): regimes, seeds (or sweep trials), steps, metrics."""
    def joined(values) -> str:
        return ", ".join(str(v) for v in sorted(set(values)))
    rows = []
    for (domain, experiment), part in frame.group_by(["domain", "experiment"]):
        seeds = "trials" if has_metric(part, SWEEP_METRIC) else "seeds"
        rows.append([domain, experiment, joined(part["regime"]),
                     f"{part['seed'].n_unique()} {seeds}",
                     f"{part['step'].min()} .. {part['step'].max()}",
                     str(part["metric"].n_unique())])
    return table_html(["domain", "experiment", "regimes", "seeds", "steps", "metrics"], sorted(rows))


def gain_drop_html(frame: pl.DataFrame) -> str:
    table = gain_drop_table(frame)
    if table.height == 0:
        return note_html("Skipped: only sweep trials in this result (see the sweep frontier).")
    header, rows = table_cells(table)
    return table_html(header, rows) + (
        "<p>Final step of each run; mean over seeds [95% Student-t interval] (nan: a seed has "
        "no value at its final step). Gain and drop in clicks per slate (recsys) or accuracy "
        "(llm), both against step 0 (so drop includes the days before the removal day D); "
        "forgetting as a difference of AUCs (0.03 = 3 AUC points) from day D; the vs-control "
        "columns subtract the paired control run, which trains on every cohort but probes the "
        "same train / held-out cohorts (control rows: experiment '&lt;name&gt;/control'); KL in "
        "nats on the training cohorts. Sweep trials are not counted as seeds.</p>")


def report_html(frame: pl.DataFrame, title: str, config_text: str | None = None) -> str:
    """The whole page as a string (see :func:`write_report`)."""
    frame = check_schema(require_rows(frame))
    runs, sweeps = split_sweeps(frame)
    subsets = {"runs": runs, "sweeps": sweeps, "all": frame}
    parts = [section_html("summary", "What this result holds", summary_html(frame)),
             section_html("table", "Gain / Drop / forgetting", gain_drop_html(frame))]
    for s in SECTIONS:
        data = subsets[s.data]
        parts.append(figure_section(s.anchor, s.title, data, s.draw, s.missing(data), s.caption))
    config = (f"<pre>{html.escape(config_text)}</pre>" if config_text
              else note_html("Skipped: no config given."))
    parts.append(section_html("config", "Config", config))
    return page_html(title, parts)


def write_report(frame: pl.DataFrame, out_path: str | Path, title: str,
                 config_text: str | None = None) -> Path:
    """Write the self-contained HTML report atomically; an empty frame raises ValueError."""
    return write_text_atomic(report_html(frame, title, config_text), out_path)


def report_run_dir(run_dir: str | Path) -> Path:
    """Read ``RUN_DIR/metrics.parquet`` (and ``config.yaml``) and write ``RUN_DIR/report.html``."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.parquet"
    if not metrics.is_file():
        raise FileNotFoundError(
            f"{metrics} not found: {run_dir} is not a finished run directory (made by "
            "`recsys-onpolicy run`); pass the folder that holds metrics.parquet")
    frame = read_metrics(metrics)
    config = run_dir / "config.yaml"
    config_text = config.read_text(encoding="utf-8") if config.is_file() else None
    experiments = ", ".join(sorted(frame["experiment"].unique().to_list()))
    return write_report(frame, run_dir / "report.html", f"{experiments} ({run_dir.name})",
                        config_text)
