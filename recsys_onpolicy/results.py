"""The one result schema both domains write: long format, one row per measured value.

Columns: ``domain, experiment, regime, seed, step, metric, value, group``; ``group`` is the cohort
or task a value belongs to (null for population-wide values). Metric names are a stable API read
by the report, the cross-domain comparison and optuna, in fixed namespaces:

- ``probe/...``  cohort-holdout AUC and its oracle ceiling, KL to base, forgetting, drop
- ``feedback/...`` feedback-loop metrics (coverage, concentration, diversity, ...)
- ``target/...`` the metric being optimised (expected clicks, target accuracy)
- ``train/...``  losses and training statistics
- ``drift/...``  parameter drift
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from simulators.logs import write_parquet_atomic
from simulators.typed_config import ConfigError

CONTROL_SUFFIX = "/control"
"""Suffix of the ``experiment`` of a paired control run (``cohort_removal/control``): a run kept
as the baseline of a removal run, not a setting of its own."""

SCHEMA: dict[str, pl.DataType] = {
    "domain": pl.Utf8,
    "experiment": pl.Utf8,
    "regime": pl.Utf8,
    "seed": pl.Int64,
    "step": pl.Int64,
    "metric": pl.Utf8,
    "value": pl.Float64,
    "group": pl.Utf8,
}


def metric_rows(
    *, domain: str, experiment: str, regime: str, seed: int, step: int,
    values: Mapping[str, float], group: str | None = None,
) -> list[dict]:
    """Rows for several metrics measured at one (run, step, group)."""
    return [
        {"domain": domain, "experiment": experiment, "regime": regime, "seed": int(seed),
         "step": int(step), "metric": m, "value": float(v),
         "group": None if group is None else str(group)}
        for m, v in values.items()
    ]


def to_frame(rows: Iterable[Mapping]) -> pl.DataFrame:
    """A frame in the exact schema (column order and dtypes), empty if there are no rows."""
    rows = list(rows)
    if not rows:
        return pl.DataFrame(schema=SCHEMA)
    return pl.DataFrame(rows, schema=SCHEMA)


def check_schema(frame: pl.DataFrame, where: str = "metrics frame") -> pl.DataFrame:
    """Raise ValueError unless ``frame`` has exactly the schema's columns and dtypes; the
    message names ``where`` and only the columns that differ."""
    got = dict(zip(frame.columns, frame.dtypes))
    if got != SCHEMA:
        missing = [c for c in SCHEMA if c not in got]
        extra = [c for c in got if c not in SCHEMA]
        typed = [f"{c} is {got[c]}, not {SCHEMA[c]}" for c in SCHEMA
                 if c in got and got[c] != SCHEMA[c]]
        parts = ([f"missing columns {missing}"] if missing else []) + (
            [f"extra columns {extra}"] if extra else []) + typed
        if not parts:  # same columns and types, another order
            parts = [f"columns in the order {list(got)}, not {list(SCHEMA)}"]
        raise ValueError(f"{where} does not match the result schema ({'; '.join(parts)}); "
                         f"expected the columns {list(SCHEMA)}")
    return frame


def write_metrics(frame: pl.DataFrame, path: str | Path) -> Path:
    """Validate the schema and write ``metrics.parquet`` atomically."""
    return write_parquet_atomic(check_schema(frame), path)


def read_metrics(path: str | Path) -> pl.DataFrame:
    """Read a metrics file and check its schema. A folder: every ``metrics.parquet`` under it
    except those inside a folder that has its own (a run directory's file holds every run's
    rows: the per-run copies under its ``runs/`` are not read again)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.rglob("metrics.parquet"))
        tops = {f.parent for f in found}
        files = [f for f in found if not any(a in tops for a in f.parent.parents)]
    else:
        files = [p]
    if not files:
        raise FileNotFoundError(f"no metrics.parquet under {p}")
    return pl.concat([check_schema(_read(f), str(f)) for f in files], how="vertical")


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as err:
        raise ConfigError(f"{path} is not a readable Parquet file ({type(err).__name__}): it was "
                          "damaged or replaced; rerunning the run with --resume writes it again"
                          ) from None
