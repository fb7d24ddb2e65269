"""Impression logs: one row per impression as a polars frame, stored as Parquet partitioned by day.

Columns (in this order): ``day, request, user, cohort, position, item, click, propensity,
log_propensity, true_prob``. ``propensity`` is the probability with which the serving policy chose
the whole slate (repeated on each of its K rows; it underflows to 0 for very unlikely slates, so
``log_propensity`` is kept too); ``true_prob`` is the simulator's true click probability of that
impression when it was served.

Layout: ``root/day=0007/part-0.parquet``. Writes are atomic: the frame goes to a hidden temporary
file in the same folder, is flushed to disk, then renamed over the target, so a run killed
mid-write leaves either the previous file or the new one, never half a file (a leftover
``.part-0.parquet.*.tmp`` is ignored by :func:`read_logs`).
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from simulators.atomic import atomic_write
from simulators.day import DayLog

SCHEMA: dict[str, pl.DataType] = {
    "day": pl.Int32,
    "request": pl.Int64,
    "user": pl.Int64,
    "cohort": pl.Int32,
    "position": pl.Int32,
    "item": pl.Int64,
    "click": pl.Int8,
    "propensity": pl.Float64,
    "log_propensity": pl.Float64,
    "true_prob": pl.Float32,
}


def day_log_to_frame(log: DayLog) -> pl.DataFrame:
    """One row per impression (R * K rows), ordered by request then position."""
    r, k = log.items.shape

    def per_request(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().repeat_interleave(k)

    logp = per_request(log.log_propensity.double())
    cols = {
        "day": per_request(log.day),
        "request": per_request(log.request_id),
        "user": per_request(log.users),
        "cohort": per_request(log.cohort),
        "position": torch.arange(k).repeat(r),
        "item": log.items.detach().cpu().reshape(-1),
        "click": log.clicks.detach().cpu().reshape(-1),
        "propensity": logp.exp(),
        "log_propensity": logp,
        "true_prob": log.true_probs.detach().cpu().reshape(-1),
    }
    return pl.DataFrame({name: pl.Series(name, cols[name].numpy()).cast(dtype)
                         for name, dtype in SCHEMA.items()})


def day_dir(root: str | Path, day: int) -> Path:
    """The partition folder of ``day``: ``root/day=0007``."""
    return Path(root) / f"day={int(day):04d}"


def write_parquet_atomic(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` atomically (:func:`simulators.atomic.atomic_write`)."""
    return atomic_write(path, frame.write_parquet)


def write_day(frame: pl.DataFrame, root: str | Path) -> Path:
    """Write one day's impressions to ``root/day=DDDD/part-0.parquet`` atomically; returns the path."""
    if frame.columns != list(SCHEMA):
        raise ValueError(f"write_day expects the columns {list(SCHEMA)}, got {frame.columns} "
                         "(build the frame with day_log_to_frame)")
    days = frame["day"].unique().to_list()
    if len(days) != 1:
        raise ValueError(f"write_day writes one day per call; the frame holds days {sorted(days)} "
                         "(split it with frame.partition_by('day'))")
    return write_parquet_atomic(frame, day_dir(root, days[0]) / "part-0.parquet")


def read_logs(root: str | Path, days: list[int] | None = None) -> pl.DataFrame:
    """All (or the given) days under ``root`` as one frame, sorted by day, request, position."""
    root = Path(root)
    if days is None:
        files = sorted(root.glob("day=*/part-*.parquet"))
    else:
        files = [f for d in days for f in sorted(day_dir(root, d).glob("part-*.parquet"))]
    if not files:
        return pl.DataFrame(schema=SCHEMA)
    frame = pl.concat([pl.read_parquet(f) for f in files])
    return frame.sort(["day", "request", "position"])
