"""Forgetting of a removed cohort, from metric frames (pure: frames in, rows out).

Definition (``../shared/ARCHITECTURE.md``, "Probes"): forgetting of a removed cohort on day t is
``AUC(day D) - AUC(day t)`` (positive = the model got worse on the cohort since its data left
the stream on day D), and the same minus the paired control run's value, a run identical but for
the removal: that separates forgetting from what happens to the cohort's AUC anyway (interest
drift, the world's feedback loop, the training of the other cohorts' shared parameters without
any removal).

Both read ``probe/auc`` rows of group ``c<k>`` and are defined for t >= D; a run without an AUC
row at step D gets no rows (nothing to compare to).
"""
from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from recsys_onpolicy.results import SCHEMA, check_schema, to_frame

RUN_KEYS = ["domain", "experiment", "regime", "seed"]
PAIR_KEYS = ("domain", "regime", "seed")


def cohort_group(k: int) -> str:
    """The ``group`` value of cohort k: ``c<k>``."""
    return f"c{int(k)}"


def _forgetting(frame: pl.DataFrame, removal_day: int, groups: list[str]) -> pl.DataFrame:
    """``RUN_KEYS, group, step, value`` with value = AUC(D) - AUC(step) for step >= D."""
    auc = frame.filter((pl.col("metric") == "probe/auc") & pl.col("group").is_in(groups))
    base = auc.filter(pl.col("step") == removal_day).select(
        RUN_KEYS + ["group", pl.col("value").alias("auc_d")])
    later = auc.filter(pl.col("step") >= removal_day)
    return later.join(base, on=RUN_KEYS + ["group"], how="inner").select(
        RUN_KEYS + ["group", "step", (pl.col("auc_d") - pl.col("value")).alias("value")])


def forgetting_rows(
    run: pl.DataFrame,
    removal_day: int,
    cohorts: Sequence[int],
    control: pl.DataFrame | None = None,
    pair_on: Sequence[str] = PAIR_KEYS,
) -> pl.DataFrame:
    """``probe/forgetting`` rows of the removed cohorts, and ``probe/forgetting_vs_control``
    rows when a control frame is given, in the result schema.

    Args:
        run: metrics (result schema) of one or several runs with the removal.
        removal_day: D (``removal.from_day``): step D is the model after days 0 .. D-1, the
            last one trained on the cohort's data, and the baseline of the forgetting rows.
        cohorts: the removed cohort ids.
        control: metrics of the paired control runs (same config but no removal), or None.
        pair_on: columns that pair a run with its control (its experiment name may differ);
            each run row must match at most one control run.
    Returns:
        forgetting rows (every run step >= D) then the control-adjusted rows (steps and groups
        that both sides have), sorted; empty when nothing matches.
    """
    groups = [cohort_group(k) for k in cohorts]
    own = _forgetting(check_schema(run), removal_day, groups)
    parts = [own.with_columns(metric=pl.lit("probe/forgetting"))]
    if control is not None:
        pair = list(pair_on) + ["group", "step"]
        ctrl = _forgetting(check_schema(control), removal_day, groups)
        ctrl = ctrl.select(pair + [pl.col("value").alias("control")])
        if ctrl.select(pair).is_duplicated().any():
            raise ValueError(f"control frame has several runs per {list(pair_on)}: pass one "
                             "control run per paired key, or add columns to pair_on")
        adj = own.join(ctrl, on=pair, how="inner").with_columns(
            value=pl.col("value") - pl.col("control"),
            metric=pl.lit("probe/forgetting_vs_control"))
        parts.append(adj.drop("control"))
    out = pl.concat([p.select(list(SCHEMA)) for p in parts]).cast(SCHEMA)
    return out.sort(["metric"] + RUN_KEYS + ["group", "step"]) if out.height else to_frame([])
