"""Forgetting of a removed cohort, from metric frames (pure: frames in, rows out).

Definition (``../shared/ARCHITECTURE.md``, "Probes"): forgetting of a removed cohort on day t is
``AUC(day D) - AUC(day t)`` (positive = the model got worse on the cohort since its data left
the stream on day D), and the same minus the paired control run's value, a run identical but for
the removal: that separates forgetting from what happens to the cohort's AUC anyway (interest
drift, the world's feedback loop, the training of the other cohorts' shared parameters without
any removal).

Both read ``probe/auc`` rows of group ``c<k>`` and are defined for t >= D; a run without an AUC
row at step D gets no rows (nothing to compare to).

With a control, Drop is adjusted the same way: ``probe/drop_vs_control`` = the run's ``probe/drop``
minus its control's at the same step (the control's probes hold out the same cohorts:
``removal.control``), i.e. the fall of the removed cohorts' expected clicks that the removal
caused, net of what happens to them anyway. Like Drop it is measured from day 0, so it is 0 up to
step D (the two runs are the same until then; bit-exact on CPU, up to float rounding on a GPU).
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
        forgetting rows (every run step >= D), then with a control the control-adjusted rows
        (``probe/forgetting_vs_control``: steps and groups that both sides have;
        ``probe/drop_vs_control``: steps where both have a ``probe/drop``), sorted; empty when
        nothing matches.
    """
    groups = [cohort_group(k) for k in cohorts]
    run = check_schema(run)
    own = _forgetting(run, removal_day, groups)
    parts = [own.with_columns(metric=pl.lit("probe/forgetting"))]
    if control is not None:
        control = check_schema(control)
        ctrl = _forgetting(control, removal_day, groups)
        parts.append(_minus_control(own, ctrl, list(pair_on) + ["group", "step"],
                                    "probe/forgetting_vs_control"))
        drops = [f.filter((pl.col("metric") == "probe/drop") & pl.col("group").is_null())
                 for f in (run, control)]
        parts.append(_minus_control(*drops, list(pair_on) + ["step"], "probe/drop_vs_control"))
    out = pl.concat([p.select(list(SCHEMA)) for p in parts]).cast(SCHEMA)
    return out.sort(["metric"] + RUN_KEYS + ["group", "step"]) if out.height else to_frame([])


def _minus_control(own: pl.DataFrame, control: pl.DataFrame, pair: list[str],
                   metric: str) -> pl.DataFrame:
    """``own`` rows with value = own value - the paired control's (inner join on ``pair``)."""
    ctrl = control.select(pair + [pl.col("value").alias("control")])
    if ctrl.select(pair).is_duplicated().any():
        raise ValueError(f"control frame has several runs per {pair}: pass one control run per "
                         "paired key, or add columns to pair_on")
    return own.join(ctrl, on=pair, how="inner").with_columns(
        value=pl.col("value") - pl.col("control"), metric=pl.lit(metric)).drop("control")
