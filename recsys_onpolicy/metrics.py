"""Pure metric functions behind the probes and the report, with exact definitions.

Inputs are torch tensors or anything ``numpy.asarray`` accepts; scalar results are Python floats,
per-row results are tensors. Nothing here knows about the simulator or the model: ``probes.py``
gathers the inputs (scores, exposures, embeddings, parameters) and calls these.

Groups
- ranking quality: :func:`auc`
- feedback loop: :func:`exposure_counts`, :func:`exposure_gini`, :func:`coverage`,
  :func:`exposure_entropy`, :func:`intra_list_diversity`, :func:`interest_homogenisation`,
  :func:`regret`
- parameter drift: :func:`share_unchanged`, :func:`relative_l2_change`, :func:`rows_touched`
- statistics for reports: :func:`mean_ci95`, :func:`pearson_r2`
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

Params = torch.Tensor | Sequence[torch.Tensor]


def _np(x) -> np.ndarray:
    """1-D float64 numpy copy of a tensor / array / list."""
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _tensors(params: Params) -> list[torch.Tensor]:
    return [params] if torch.is_tensor(params) else list(params)


def _pairs(before: Params, after: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    b, a = _tensors(before), _tensors(after)
    if len(b) != len(a) or any(x.shape != y.shape for x, y in zip(b, a)):
        raise ValueError(
            f"before/after must be tensors of equal shapes, got {[tuple(x.shape) for x in b]} "
            f"and {[tuple(y.shape) for y in a]}"
        )
    return [(x.detach(), y.detach().to(x.device)) for x, y in zip(b, a)]


# ---------------------------------------------------------------- ranking quality


def auc(scores, labels) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (sklearn ``roc_auc_score``), both (N,).

    Returns NaN, without raising, when the labels hold a single class (AUC undefined).
    """
    s, y = _np(scores), _np(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same length")
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, s))


# ---------------------------------------------------------------- feedback loop


def exposure_counts(items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Times each catalogue item was shown: (any shape) item ids -> (n_items,) long.

    Negative ids are padding and ignored; an id >= n_items raises.
    """
    ids = items.reshape(-1)
    ids = ids[ids >= 0]
    if ids.numel() and int(ids.max()) >= n_items:
        raise ValueError(f"item id {int(ids.max())} is outside the catalogue of n_items={n_items}")
    return torch.bincount(ids, minlength=n_items)


def exposure_gini(counts) -> float:
    """Gini coefficient of exposure counts over the whole catalogue (include unexposed items).

    With counts x_1..x_n: G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), computed from the
    ascending sort as G = 2 sum_i i x_(i) / (n sum x) - (n + 1) / n, i = 1..n.
    0 = every item shown equally; (n - 1) / n (-> 1) = one item gets all exposure.
    NaN when nothing was shown. Counts must be non-negative.
    """
    x = np.sort(_np(counts))
    if len(x) == 0 or x[0] < 0:
        raise ValueError("counts must be a non-empty vector of non-negative exposure counts")
    n, total = len(x), x.sum()
    if total == 0:
        return math.nan
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def coverage(items: torch.Tensor, n_items: int) -> float:
    """Share of the n_items catalogue items shown at least once among ``items`` (any shape)."""
    return float((exposure_counts(items, n_items) > 0).double().mean())


def exposure_entropy(counts, normalised: bool = False) -> float:
    """Shannon entropy (nats) of the exposure distribution p_i = x_i / sum x, 0 log 0 = 0.

    ``normalised=True`` divides by log n (n = catalogue size, len(counts)), giving [0, 1]:
    1 = uniform exposure. NaN when nothing was shown or (normalised) when n = 1.
    """
    x = _np(counts)
    if len(x) == 0 or (x < 0).any():
        raise ValueError("counts must be a non-empty vector of non-negative exposure counts")
    if x.sum() == 0:
        return math.nan
    p = x[x > 0] / x.sum()
    h = float(-(p * np.log(p)).sum())
    if not normalised:
        return h
    return h / math.log(len(x)) if len(x) > 1 else math.nan


def intra_list_diversity(item_emb: torch.Tensor) -> float:
    """Mean pairwise cosine distance within a slate, averaged over slates.

    Args:
        item_emb: (B, K, D) embeddings of the K items of each of B slates, K >= 2.
    Returns:
        mean over slates b and pairs i < j of 1 - cos(e_bi, e_bj). A zero vector has cosine 0
        with everything. For one-hot topic vectors this is the share of pairs on different topics.
    """
    if item_emb.dim() != 3 or item_emb.shape[1] < 2:
        raise ValueError(f"item_emb must be (B, K, D) with K >= 2, got {tuple(item_emb.shape)}")
    e = F.normalize(_f64(item_emb), dim=-1)  # (B, K, D)
    sim = e @ e.transpose(1, 2)  # (B, K, K)
    i, j = torch.triu_indices(e.shape[1], e.shape[1], offset=1, device=e.device)
    return float(1.0 - sim[:, i, j].mean())


def interest_homogenisation(user_vectors: torch.Tensor) -> float:
    """Mean pairwise cosine similarity between users (higher = more homogeneous interests).

    Args:
        user_vectors: (U, D) one interest vector per user (e.g. the mode-weighted mean of the
            simulator's interests), U >= 2.
    Returns:
        mean over unordered pairs u != v of cos(x_u, x_v), exact for any U in O(U D) through
        sum_{u != v} e_u . e_v = ||sum_u e_u||^2 - sum_u ||e_u||^2 with e = x / ||x||. A zero
        vector has cosine 0 with everyone.
    """
    if user_vectors.dim() != 2 or user_vectors.shape[0] < 2:
        raise ValueError(
            f"user_vectors must be (U, D) with U >= 2, got {tuple(user_vectors.shape)}"
        )
    e = F.normalize(_f64(user_vectors), dim=-1)  # (U, D)
    u = e.shape[0]
    cross = e.sum(dim=0).pow(2).sum() - e.pow(2).sum()
    return float(cross / (u * (u - 1)))


def regret(expected_clicks_served, expected_clicks_oracle) -> float:
    """Mean over requests of E[clicks | oracle slate] - E[clicks | served slate], both (R,)."""
    served, oracle = _np(expected_clicks_served), _np(expected_clicks_oracle)
    if served.shape != oracle.shape or len(served) == 0:
        raise ValueError(f"served {served.shape} and oracle {oracle.shape} must match, non-empty")
    return float(np.mean(oracle - served))


# ---------------------------------------------------------------- parameter drift


def share_unchanged(before: Params, after: Params, dtype: torch.dtype | None = None) -> float:
    """Share of parameter elements exactly equal before and after, over all given tensors.

    With ``dtype`` (e.g. torch.bfloat16) both sides are cast to it first, so changes below that
    precision count as unchanged. NaN elements count as changed.
    """
    pairs = _pairs(before, after)
    if dtype is not None:
        pairs = [(b.to(dtype), a.to(dtype)) for b, a in pairs]
    same = sum(int((b == a).sum()) for b, a in pairs)
    total = sum(b.numel() for b, _ in pairs)
    if total == 0:
        raise ValueError("no parameter elements given")
    return same / total


def relative_l2_change(before: Params, after: Params) -> float:
    """||after - before|| / ||before||, Frobenius norms over all given tensors together.

    Computed in float64; inf when ``before`` is all zeros and something changed, NaN if not.
    """
    pairs = _pairs(before, after)
    diff = sum(float((_f64(a) - _f64(b)).pow(2).sum()) for b, a in pairs)
    base = sum(float(_f64(b).pow(2).sum()) for b, _ in pairs)
    if base == 0:
        return math.inf if diff > 0 else math.nan
    return math.sqrt(diff / base)


def rows_touched(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,) bool: rows (embedding rows) with any element changed."""
    if before.dim() != 2 or before.shape != after.shape:
        raise ValueError(
            f"need two (N, D) tables of equal shape, got {tuple(before.shape)} and "
            f"{tuple(after.shape)}"
        )
    return (before.detach() != after.detach().to(before.device)).any(dim=1)


# ---------------------------------------------------------------- statistics for reports


def mean_ci95(values) -> tuple[float, float, float]:
    """(mean, low, high): mean and 95% Student-t interval mean -+ t_{0.975, n-1} s / sqrt(n).

    s is the sample standard deviation (ddof=1); NaN values propagate. One value gives
    (v, nan, nan); an empty input raises.
    """
    v = _np(values)
    if len(v) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def pearson_r2(x, y) -> tuple[float, float]:
    """(r, R^2): Pearson correlation and the R^2 of the least-squares line y ~ a + b x (= r^2).

    NaN for both with fewer than 3 points or when x or y has zero variance.
    """
    a, b = _np(x), _np(y)
    if a.shape != b.shape:
        raise ValueError(f"x {a.shape} and y {b.shape} must have the same length")
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan
    r = float(stats.pearsonr(a, b).statistic)
    return r, r * r
