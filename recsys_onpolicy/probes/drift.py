"""Parameter drift of the trained model against the base policy pi_0.

Definitions (``../shared/ARCHITECTURE.md``, "Probes"); the formulas live in
:mod:`recsys_onpolicy.metrics`:

- ``drift/share_unchanged``: share of all parameter elements (dense head and embedding tables)
  exactly equal to pi_0's; ``drift/share_unchanged_bf16``: the same after casting both to
  bfloat16 (changes below bf16 precision count as unchanged);
- ``drift/dense_rel_l2``, ``drift/sparse_rel_l2``: ||theta_t - theta_0|| / ||theta_0|| over the
  dense head / over all embedding tables;
- ``drift/rows_touched`` (group ``c<k>``): share of cohort k's user-embedding rows (the distinct
  rows its users map to, after hashing when the user table is smaller than the user count) that
  differ from pi_0's in any element.

Every row of every table counts, including item rows reserved for items that have not arrived
yet (they stay unchanged until then), so ``share_unchanged`` is a share of the whole model.
"""
from __future__ import annotations

import torch

from recsys_onpolicy import metrics
from recsys_onpolicy.model import hash_ids


def model_parameters(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(dense, tables)`` by name of a :class:`~recsys_onpolicy.model.TrainableScorer` or a
    plain :class:`~recsys_onpolicy.model.Scorer` (live tensors: do not modify)."""
    if hasattr(model, "sparse_tables"):
        return dict(model.dense_parameters()), dict(model.sparse_tables())
    return dict(model.dense_named_parameters()), model.table_weights()


def _aligned(before: dict, after: dict, what: str) -> tuple[list, list]:
    if set(before) != set(after):
        raise ValueError(f"{what} parameters differ by name: {sorted(set(before) ^ set(after))}"
                         " (compare models built from the same ModelConfig)")
    names = sorted(before)
    return [before[n].detach() for n in names], [after[n].detach() for n in names]


@torch.no_grad()
def parameter_drift(
    dense_0: dict[str, torch.Tensor], tables_0: dict[str, torch.Tensor],
    dense_t: dict[str, torch.Tensor], tables_t: dict[str, torch.Tensor],
) -> dict[str, float]:
    """The population-wide ``drift/*`` values of parameters ``*_t`` against pi_0's ``*_0``."""
    d0, dt = _aligned(dense_0, dense_t, "dense")
    s0, st = _aligned(tables_0, tables_t, "table")
    return {
        "drift/share_unchanged": metrics.share_unchanged(d0 + s0, dt + st),
        "drift/share_unchanged_bf16": metrics.share_unchanged(d0 + s0, dt + st, torch.bfloat16),
        "drift/dense_rel_l2": metrics.relative_l2_change(d0, dt),
        "drift/sparse_rel_l2": metrics.relative_l2_change(s0, st),
    }


def user_rows(users: torch.Tensor, table_rows: int, n_users: int) -> torch.Tensor:
    """Row of the user table each user id reads (the model's hash when rows < n_users)."""
    return users if table_rows >= n_users else hash_ids(users, table_rows, "user")


@torch.no_grad()
def rows_touched_by_cohort(
    user_table_0: torch.Tensor, user_table_t: torch.Tensor, cohort: torch.Tensor,
) -> dict[int, float]:
    """``{k: share of cohort k's user-table rows changed}``.

    Args:
        user_table_0, user_table_t: (N, D) the user embedding table of pi_0 and of pi_t.
        cohort: (U,) cohort of every user id (``world.users.cohort``); user u reads row
            :func:`user_rows` (u).
    """
    touched = metrics.rows_touched(user_table_0, user_table_t)  # (N,) bool
    cohort = cohort.to(touched.device)
    n_users, n_rows = cohort.shape[0], touched.shape[0]
    ids = torch.arange(n_users, device=touched.device)
    out = {}
    for k in cohort.unique().tolist():
        rows = user_rows(ids[cohort == k], n_rows, n_users).unique()
        out[k] = float(touched[rows].double().mean())
    return out
