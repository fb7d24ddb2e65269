"""Probes: what the research measures about a policy, every day of a run.

Exact definitions in ``../shared/ARCHITECTURE.md`` ("Probes"); metric names in
``docs/interfaces.md`` ("Metric names"). One file per probe family:

- :mod:`.config`: :class:`ProbeConfig`, the knobs.
- :mod:`.probe_set`: the fixed probe requests (users, candidates, uniform slates) per cohort.
- :mod:`.auc`: cohort-holdout AUC and its oracle ceiling.
- :mod:`.forgetting`: forgetting of a removed cohort, plain and against a paired control.
- :mod:`.target`: expected clicks of the served policy, Gain and Drop.
- :mod:`.kl`: KL(pi_0 || pi_t), exact on the first position and Monte Carlo on slates.
- :mod:`.feedback`: exposure concentration, diversity, homogenisation, regret of a served day.
- :mod:`.drift`: parameter drift of the model against pi_0.
- :mod:`.daily`: :class:`DailyProbes`, all of them as the daily loop's ``probe_fn``.
"""
from __future__ import annotations

from recsys_onpolicy.probes.auc import cohort_holdout_auc, probe_labels, soft_label_auc
from recsys_onpolicy.probes.config import ProbeConfig
from recsys_onpolicy.probes.daily import (
    DailyProbes,
    measure_auc,
    measure_drift,
    measure_gain_drop,
    measure_kl,
    measure_target,
)
from recsys_onpolicy.probes.drift import (
    model_parameters,
    parameter_drift,
    rows_touched_by_cohort,
    user_rows,
)
from recsys_onpolicy.probes.feedback import feedback_metrics, mean_interest
from recsys_onpolicy.probes.forgetting import cohort_group, forgetting_rows
from recsys_onpolicy.probes.kl import first_position_kl, slate_kl
from recsys_onpolicy.probes.probe_set import ProbeSet, make_probe_set, score_probes
from recsys_onpolicy.probes.target import gain_drop, served_expected_clicks

__all__ = [
    "DailyProbes", "ProbeConfig", "ProbeSet", "cohort_group", "cohort_holdout_auc",
    "feedback_metrics", "first_position_kl", "forgetting_rows", "gain_drop", "make_probe_set",
    "mean_interest", "measure_auc", "measure_drift", "measure_gain_drop", "measure_kl",
    "measure_target", "model_parameters", "parameter_drift", "probe_labels",
    "rows_touched_by_cohort", "score_probes", "served_expected_clicks", "slate_kl",
    "soft_label_auc", "user_rows",
]
