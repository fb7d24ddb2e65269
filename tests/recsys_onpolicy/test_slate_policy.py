"""Plackett-Luce slate policy against brute-force enumeration of all ordered slates."""
from __future__ import annotations

import itertools
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from scipy import stats

from recsys_onpolicy.slate_policy import (
    first_position_probs,
    greedy_slates,
    sample_groups,
    sample_slates,
    slate_log_prob,
)

SCORES = [0.3, -1.2, 1.5, 0.0, 0.8]  # C = 5, distinct so that wrong orderings show
K = 3
INF = float("inf")


def pl_prob(scores: list[float], slate: tuple[int, ...], t: float = 1.0) -> float:
    """Plackett-Luce probability written out position by position, in plain Python."""
    w = [math.exp(s / t) for s in scores]
    prob, left = 1.0, set(range(len(scores)))
    for c in slate:
        prob *= w[c] / sum(w[i] for i in left)
        left.remove(c)
    return prob


def pl_probs(scores: list[float], slates: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    probs = [pl_prob(scores, tuple(y), t) for y in slates.tolist()]
    return torch.tensor(probs, dtype=torch.float64)


def all_slates(c: int, k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(c), k)))  # (C!/(C-K)!, K)


def enumerate_log_probs(scores: list[float], k: int, t: float = 1.0):
    """All ordered slates (N, K) and their log-probabilities (N,) under slate_log_prob."""
    slates = all_slates(len(scores), k)
    s = torch.tensor(scores, dtype=torch.float64).expand(len(slates), -1)
    return slates, slate_log_prob(s, slates, t)


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_log_probs_match_pl_formula_and_sum_to_one(t):
    slates, logp = enumerate_log_probs(SCORES, K, t)
    assert len(slates) == 60
    expected = pl_probs(SCORES, slates, t)
    torch.testing.assert_close(logp.exp(), expected, rtol=1e-12, atol=0)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_temperature_is_a_rescaling_of_scores():
    slates, logp_t = enumerate_log_probs(SCORES, K, 2.5)
    _, logp_scaled = enumerate_log_probs([s / 2.5 for s in SCORES], K)
    torch.testing.assert_close(logp_t, logp_scaled)
    # high temperature -> uniform over the 60 slates; low -> all mass on the greedy slate
    assert enumerate_log_probs(SCORES, K, 1e4)[1].exp().sub(1 / 60).abs().max() < 1e-3
    _, logp_cold = enumerate_log_probs(SCORES, K, 0.01)
    greedy = greedy_slates(torch.tensor(SCORES), K).tolist()
    assert slates[logp_cold.argmax()].tolist() == greedy == [2, 4, 0]
    assert logp_cold.max().exp() > 0.999


def test_first_position_probs_is_the_marginal_of_the_slate_distribution():
    for t in (1.0, 0.7):
        slates, logp = enumerate_log_probs(SCORES, K, t)
        marginal = torch.zeros(5, dtype=torch.float64).index_add_(0, slates[:, 0], logp.exp())
        fp = first_position_probs(torch.tensor(SCORES, dtype=torch.float64), t)
        torch.testing.assert_close(fp, marginal)


def test_greedy_is_the_mode():
    slates, logp = enumerate_log_probs(SCORES, K)
    assert slates[logp.argmax()].tolist() == greedy_slates(torch.tensor([SCORES]), K)[0].tolist()


def test_masked_candidates_have_zero_probability_and_the_rest_sums_to_one():
    scores = [0.3, -INF, 1.5, 0.0, 0.8]
    slates, logp = enumerate_log_probs(scores, K)
    has_masked = (slates == 1).any(dim=1)
    assert torch.isneginf(logp[has_masked]).all()
    expected = pl_probs(scores, slates[~has_masked])
    torch.testing.assert_close(logp[~has_masked].exp(), expected)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def empirical_check(samples: torch.Tensor, t: float) -> None:
    """Sample frequencies of all 60 slates vs exp(log_prob).

    Each cell's frequency has standard deviation sqrt(p (1 - p) / N); a correct sampler exceeds
    5 of them in any of the 60 cells with probability < 60 * 5.7e-7 = 3.4e-5 (union bound). The
    chi-square test (59 dof) must not reject at 1e-4. With N = 200,000 the 5-sigma band is
    +-0.0013 or narrower, far below the differences a wrong order or temperature would make.
    """
    slates, logp = enumerate_log_probs(SCORES, K, t)
    p = logp.exp()
    code = (samples * torch.tensor([25, 5, 1])).sum(-1)  # each ordered slate -> an int < 125
    counts = torch.bincount(code, minlength=125)[(slates * torch.tensor([25, 5, 1])).sum(-1)]
    n = len(samples)
    assert counts.sum() == n  # every sample is a valid slate (no duplicates)
    freq = counts.double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() / sigma).max() < 5
    assert stats.chisquare(counts.numpy(), (p * n).numpy()).pvalue > 1e-4


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_gumbel_top_k_frequencies_match_log_probs(t):
    gen = torch.Generator().manual_seed(0)
    samples = sample_slates(torch.tensor(SCORES).expand(200_000, -1), K, gen, t)
    assert samples.shape == (200_000, K) and samples.dtype == torch.long
    empirical_check(samples, t)


def test_group_samples_match_log_probs_and_differ_within_a_group():
    gen = torch.Generator().manual_seed(1)
    groups = sample_groups(torch.tensor([SCORES]).expand(25_000, -1), K, 8, gen)  # (B, G, K)
    assert groups.shape == (25_000, 8, K)
    empirical_check(groups.reshape(-1, K), 1.0)
    # independent draws: the share of groups whose 8 slates are identical is tiny
    same = (groups == groups[:, :1]).all(dim=(1, 2)).double().mean()
    assert same < 0.01


def test_sampling_is_reproducible_from_the_generator():
    s = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    a = sample_slates(s, 4, torch.Generator().manual_seed(7))
    b = sample_slates(s, 4, torch.Generator().manual_seed(7))
    c = sample_slates(s, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@st.composite
def masked_scores(draw):
    c = draw(st.integers(2, 12))
    k = draw(st.integers(1, c))
    b = draw(st.integers(1, 4))
    vals = draw(st.lists(st.floats(-30, 30), min_size=b * c, max_size=b * c))
    scores = torch.tensor(vals).reshape(b, c)
    n_mask = draw(st.integers(0, c - k))  # keep at least k candidates open
    scores[:, :n_mask] = -INF
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    seed, t = draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.3, 1.0, 4.0]))
    return scores[:, perm], k, seed, t


@settings(max_examples=60, deadline=None)
@given(masked_scores())
def test_samples_are_valid_slates(case):
    scores, k, seed, t = case
    slates = sample_slates(scores, k, torch.Generator().manual_seed(seed), t)  # (B, K)
    assert slates.shape == (scores.shape[0], k)
    assert all(len(set(row)) == k for row in slates.tolist())  # no duplicates
    assert torch.isfinite(scores.gather(1, slates)).all()  # masked candidates never sampled
    logp = slate_log_prob(scores, slates, t)
    assert torch.isfinite(logp).all() and (logp <= 1e-6).all()


def test_masked_candidates_never_sampled_in_bulk():
    scores = torch.tensor([[5.0, -INF, 5.0, -INF, -3.0, 0.0]]).expand(50_000, -1)
    slates = sample_slates(scores, 4, torch.Generator().manual_seed(2), temperature=5.0)
    assert not ((slates == 1) | (slates == 3)).any()


def test_gradients_are_finite_and_correct():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    scores[0, 2] = -INF
    slates = sample_slates(scores, 4, gen)
    scores.requires_grad_(True)
    slate_log_prob(scores, slates, 0.7).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2] == 0
    # analytic gradient of a PL log-prob vs finite differences (unmasked, double precision)
    dense = torch.randn(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = sample_slates(dense.detach(), 3, gen)
    assert torch.autograd.gradcheck(lambda s: slate_log_prob(s, y, 1.3), (dense,))


def test_numerically_stable_for_large_scores_and_shift_invariant():
    base = torch.tensor([SCORES], dtype=torch.float64)
    slates = all_slates(5, K)
    ref = slate_log_prob(base.expand(60, -1), slates)
    big = (base * 1e3 + 1e6).float()  # exp would overflow in float32 without logsumexp
    logp = slate_log_prob(big.expand(60, -1), slates)
    assert torch.isfinite(logp).all()
    assert logp.exp().double().sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(slate_log_prob((base + 123.0).expand(60, -1), slates), ref)


def reference_log_prob(scores: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce log-probabilities (N,) of slates (N, K) under scores (N, C), position by
    position with autograd-differentiable torch ops (the plain reference for the fast path)."""
    total = torch.zeros(slates.shape[0], dtype=scores.dtype)
    left = torch.ones_like(scores, dtype=torch.bool)
    for j in range(slates.shape[1]):
        pick = slates[:, j:j + 1]
        norm = scores.masked_fill(~left, -INF).logsumexp(-1)
        total = total + scores.gather(1, pick)[:, 0] - norm
        left = left.scatter(1, pick, False)
    return total


@pytest.mark.parametrize("spread, c, k", [(1.0, 7, 3), (40.0, 7, 4), (1.0, 4, 4), (200.0, 6, 6)])
def test_log_prob_gradient_matches_position_by_position_autograd(spread, c, k):
    """The hand-written gradient of slate_log_prob equals autograd through the plain formula:
    G slates per request on (B, C) scores, masked candidates, K = C (no candidate left over)
    and spreads whose exp overflows float32."""
    gen = torch.Generator().manual_seed(11)
    b, g = 4, 3
    base = torch.randn(b, c, generator=gen, dtype=torch.float64) * spread
    if k < c:
        base[0, 1] = -INF  # a masked candidate: never sampled, zero gradient
    slates = sample_groups(base, k, g, gen)  # (B, G, K)
    weights = torch.randn(b, g, generator=gen, dtype=torch.float64)
    fast = base.clone().requires_grad_(True)
    logp = slate_log_prob(fast, slates, 0.8)  # (B, G)
    (weights * logp).sum().backward()
    plain = base.clone().requires_grad_(True)
    flat = (plain / 0.8).repeat_interleave(g, 0)  # (B*G, C)
    ref = reference_log_prob(flat, slates.reshape(b * g, k)).view(b, g)
    (weights * ref).sum().backward()
    torch.testing.assert_close(logp, ref)
    torch.testing.assert_close(fast.grad, plain.grad)
    assert torch.isfinite(fast.grad).all()
    if k < c:
        assert fast.grad[0, 1] == 0
    # float32 (training): equal to the plain formula's autograd in float32 up to rounding
    low, low_ref = (base.float().requires_grad_(True) for _ in range(2))
    (weights.float() * slate_log_prob(low, slates, 0.8)).sum().backward()
    flat32 = (low_ref / 0.8).repeat_interleave(g, 0)
    ref32 = reference_log_prob(flat32, slates.reshape(b * g, k)).view(b, g)
    (weights.float() * ref32).sum().backward()
    torch.testing.assert_close(low.grad, low_ref.grad, rtol=1e-4, atol=1e-5 * spread)


def test_log_prob_gradient_is_finite_when_every_candidate_is_placed():
    """K = C with very negative float32 scores: no candidate is left over (rest = -inf)."""
    scores = (torch.randn(3, 5, generator=torch.Generator().manual_seed(1)) - 500.0)
    slates = sample_slates(scores, 5, torch.Generator().manual_seed(2))
    scores.requires_grad_(True)
    slate_log_prob(scores, slates).sum().backward()
    assert torch.isfinite(scores.grad).all()
    # every candidate placed: sum_c d log pi / d s_c = K - K = 0 (float32 at |s| ~ 500)
    torch.testing.assert_close(scores.grad.sum(-1), torch.zeros(3), atol=1e-3, rtol=0)


def test_gumbel_keys_equal_the_plain_formula():
    """sample_slates (in place on the uniforms) = top-k of s / t - log(-log(u)) for the same u."""
    scores = torch.randn(6, 9, generator=torch.Generator().manual_seed(2))
    scores[1, 3] = -INF
    for t in (1.0, 0.6):
        got = sample_slates(scores, 4, torch.Generator().manual_seed(5), t)
        u = torch.rand(scores.shape, generator=torch.Generator().manual_seed(5))
        keys = scores / t - torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))
        assert torch.equal(got, keys.topk(4, dim=-1).indices)


def test_group_axis_broadcasts_scores():
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(3, 7, generator=gen)
    groups = sample_groups(scores, 3, 4, gen)  # (B, G, K)
    logp = slate_log_prob(scores, groups)  # (B, C) scores with (B, G, K) slates
    assert logp.shape == (3, 4)
    per_g = torch.stack([slate_log_prob(scores, groups[:, g]) for g in range(4)], dim=1)
    torch.testing.assert_close(logp, per_g)
    full = slate_log_prob(scores.unsqueeze(1).expand(3, 4, 7), groups)  # (B, G, C) scores
    torch.testing.assert_close(full, per_g)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: sample_slates(s, 6, torch.Generator()), "k=6"),
        (lambda s: sample_slates(s, 2, torch.Generator(), temperature=0.0), "temperature"),
        (lambda s: sample_groups(s, 2, 0, torch.Generator()), "group size"),
        (lambda s: slate_log_prob(s, torch.tensor([[0, 0]])), "duplicate"),
        (lambda s: slate_log_prob(s, torch.tensor([[0, 5]])), r"\[0, C=5\)"),
        (lambda s: greedy_slates(s.masked_fill(s < 1, -INF), 2), "fewer than k=2"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.tensor([SCORES]))
