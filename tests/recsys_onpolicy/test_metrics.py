"""Every metric against a hand-built case, and against sklearn / scipy where they agree."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

from recsys_onpolicy.metrics import (
    auc,
    coverage,
    exposure_counts,
    exposure_entropy,
    exposure_gini,
    interest_homogenisation,
    intra_list_diversity,
    mean_ci95,
    pearson_r2,
    regret,
    relative_l2_change,
    rows_touched,
    share_unchanged,
)


def test_auc_by_hand_and_vs_sklearn():
    # positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of the 4 (pos, neg) pairs ordered -> 0.75
    scores, labels = torch.tensor([0.9, 0.5, 0.4, 0.1]), torch.tensor([1, 0, 1, 0])
    assert auc(scores, labels) == pytest.approx(0.75)
    s = np.random.default_rng(0).normal(size=50)
    y = (np.random.default_rng(1).random(50) < 0.4).astype(int)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))
    tied = auc(torch.tensor([0.2, 0.3, 0.3]), torch.tensor([0.0, 1.0, 0.0]))
    assert tied == pytest.approx(0.75)  # the tied (pos, neg) pair counts 1/2
    assert math.isnan(auc([0.1, 0.2], [1, 1])) and math.isnan(auc([0.1, 0.2], [0, 0]))
    with pytest.raises(ValueError, match="same length"):
        auc([0.1, 0.2], [1])


def gini_pairwise(x: list[float]) -> float:
    n, mean = len(x), sum(x) / len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


def test_exposure_gini():
    assert exposure_gini(torch.tensor([3, 3, 3, 3])) == pytest.approx(0.0)
    assert exposure_gini([0, 0, 0, 10]) == pytest.approx(3 / 4)  # (n - 1) / n
    # [1, 2, 3, 4]: sum |xi - xj| over ordered pairs = 2 (3*1 + 2*2 + 1*3) = 20; / (2 * 16 * 2.5)
    assert exposure_gini([4, 1, 3, 2]) == pytest.approx(20 / 80)
    x = [0, 5, 1, 1, 7, 0, 2]
    assert exposure_gini(x) == pytest.approx(gini_pairwise(x))
    assert math.isnan(exposure_gini([0, 0]))
    with pytest.raises(ValueError, match="non-negative"):
        exposure_gini([1, -1])


def test_exposure_counts_and_coverage():
    items = torch.tensor([[0, 2, 2], [5, 2, -1]])  # -1 is padding
    torch.testing.assert_close(exposure_counts(items, 7), torch.tensor([1, 0, 3, 0, 0, 1, 0]))
    assert coverage(items, 7) == pytest.approx(3 / 7)
    assert coverage(torch.arange(4), 4) == 1.0
    with pytest.raises(ValueError, match="n_items=5"):
        coverage(items, 5)


def test_exposure_entropy():
    assert exposure_entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert exposure_entropy([1, 1, 1, 1], normalised=True) == pytest.approx(1.0)
    assert exposure_entropy([0, 9, 0]) == 0.0
    # p = (1/2, 1/4, 1/4, 0): H = 1.5 log 2; normalised by log 4 = 2 log 2 -> 0.75
    assert exposure_entropy(torch.tensor([2, 1, 1, 0])) == pytest.approx(1.5 * math.log(2))
    assert exposure_entropy([2, 1, 1, 0], normalised=True) == pytest.approx(0.75)
    assert exposure_entropy([3, 1, 4, 1, 5]) == pytest.approx(stats.entropy([3, 1, 4, 1, 5]))
    assert math.isnan(exposure_entropy([0, 0]))


def test_intra_list_diversity():
    e = torch.eye(3)
    same_topic = torch.stack([e[0], e[0], e[0]])  # all pairs cosine 1 -> distance 0
    two_topics = torch.stack([e[0], e[0], e[1]])  # pairs: (0,1) same, (0,2), (1,2) differ -> 2/3
    assert intra_list_diversity(same_topic[None]) == pytest.approx(0.0)
    both = torch.stack([same_topic, two_topics])  # (B=2, K=3, D=3)
    assert intra_list_diversity(both) == pytest.approx((0 + 2 / 3) / 2)
    # latent vectors: (1,0), (1,1), (-1,0): cos = 1/sqrt2, -1, -1/sqrt2 -> distances averaged
    slate = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [-3.0, 0.0]]])
    expected = ((1 - 1 / math.sqrt(2)) + 2 + (1 + 1 / math.sqrt(2))) / 3
    assert intra_list_diversity(slate) == pytest.approx(expected)
    with pytest.raises(ValueError, match="K >= 2"):
        intra_list_diversity(torch.ones(2, 1, 3))


def test_interest_homogenisation_exact_and_brute_force():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # pairs: cos(1,2) = 0, cos(1,3) = cos(2,3) = 1/sqrt2 -> mean sqrt2 / 3
    assert interest_homogenisation(x) == pytest.approx(math.sqrt(2) / 3)
    parallel = torch.ones(5, 3) * torch.arange(1, 6)[:, None]  # same direction, other norms
    assert interest_homogenisation(parallel) == pytest.approx(1.0)
    assert interest_homogenisation(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    y = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y[3] = 0.0  # a zero vector has cosine 0 with everyone
    cos = [
        float(F.cosine_similarity(y[a], y[b], dim=0)) if 3 not in (a, b) else 0.0
        for a, b in itertools.combinations(range(40), 2)
    ]
    assert interest_homogenisation(y) == pytest.approx(sum(cos) / len(cos), abs=1e-12)


def test_regret():
    assert regret(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.5])) == pytest.approx(0.5)
    assert regret([1.0, 2.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="must match"):
        regret([1.0], [1.0, 2.0])


def test_share_unchanged_fp32_and_bf16():
    before = [torch.zeros(2, 3), torch.ones(4)]
    after = [torch.zeros(2, 3), torch.ones(4)]
    after[0][0, 0] = 1.0  # a real change
    after[1][1] = 1.0 + 1e-4  # below bf16 resolution at 1.0 (2^-7), above fp32's
    assert share_unchanged(before, after) == pytest.approx(8 / 10)
    assert share_unchanged(before, after, dtype=torch.bfloat16) == pytest.approx(9 / 10)
    assert share_unchanged(torch.ones(3), torch.ones(3)) == 1.0
    with pytest.raises(ValueError, match="equal shapes"):
        share_unchanged([torch.ones(3)], [torch.ones(4)])


def test_relative_l2_change():
    before = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # ||before|| = 5
    after = [torch.tensor([3.0, 1.0]), torch.tensor([[0.0], [4.0]])]  # ||diff|| = 1
    assert relative_l2_change(before, after) == pytest.approx(0.2)
    assert relative_l2_change(torch.ones(4), 3 * torch.ones(4)) == pytest.approx(2.0)
    assert relative_l2_change(torch.zeros(2), torch.ones(2)) == math.inf


def test_rows_touched():
    before = torch.zeros(4, 3)
    after = before.clone()
    after[1, 2] = 0.5
    after[3] = -1.0
    expected = torch.tensor([False, True, False, True])
    torch.testing.assert_close(rows_touched(before, after), expected)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        rows_touched(torch.zeros(4), torch.zeros(4))


def test_mean_ci95_vs_scipy():
    v = [1.0, 2.0, 3.0, 4.0]
    mean, lo, hi = mean_ci95(v)
    # s = sqrt(5/3), t_{0.975, 3} = 3.182446
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    ref = stats.t.interval(0.95, 3, loc=2.5, scale=stats.sem(v))
    assert (lo, hi) == pytest.approx(ref)
    one = mean_ci95(torch.tensor([7.0]))
    assert one[0] == 7.0 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="at least one"):
        mean_ci95([])


def test_pearson_r2():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # sum dx dy = 2.625 + (-0.125) + 0.625 + 0.375 = 3.5; sum dx^2 = 5; sum dy^2 = 4.75
    r_hand = 3.5 / math.sqrt(5 * 4.75)
    r, r2 = pearson_r2(torch.tensor(x), y)
    assert r == pytest.approx(r_hand) and r2 == pytest.approx(r_hand**2)
    slope, intercept = np.polyfit(x, y, 1)
    resid = np.asarray(y) - (slope * np.asarray(x) + intercept)
    assert r2 == pytest.approx(1 - resid.var() / np.var(y))  # R^2 of the least-squares line
    assert pearson_r2([1, 2, 3], [3, 2, 1]) == pytest.approx((-1.0, 1.0))
    assert all(math.isnan(v) for v in pearson_r2([1, 2], [1, 2]))
    assert all(math.isnan(v) for v in pearson_r2([1, 2, 3], [5, 5, 5]))
