"""Loss functions against hand-computed values, closed forms and torch.distributions."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from recsys_onpolicy.objectives import (
    categorical_kl,
    grpo_advantages,
    kl_penalty,
    pointwise_bce,
    policy_gradient_loss,
    ppo_clipped_loss,
    reinforce_loss,
    sequence_nll,
)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_pointwise_bce_matches_the_formula():
    logits, labels = t(2.0, -1.0, 0.0), torch.tensor([1, 0, 1])  # integer labels are accepted
    sig = [1 / (1 + math.exp(-x)) for x in (2.0, -1.0, 0.0)]
    manual = -(math.log(sig[0]) + math.log(1 - sig[1]) + math.log(sig[2])) / 3
    assert pointwise_bce(logits, labels).item() == pytest.approx(manual, rel=1e-12)
    # log(1 + e^-2) + log(1 + e^-1) + log 2 = 0.12693 + 0.31326 + 0.69315, over 3
    assert manual == pytest.approx(0.37778, abs=1e-5)


def test_sequence_nll_with_and_without_weights():
    logp = t(-1.0, -2.0, -3.0, grad=True)
    assert sequence_nll(logp).item() == pytest.approx(2.0)
    assert sequence_nll(logp, torch.tensor([1, 0, 1])).item() == pytest.approx((1 + 3) / 2)
    assert sequence_nll(logp, torch.tensor([0, 1, 0])).item() == pytest.approx(2.0)
    zero = sequence_nll(logp, torch.zeros(3))
    assert zero.item() == 0.0 and zero.requires_grad  # all filtered out: zero loss, still a graph
    sequence_nll(logp, torch.tensor([1.0, 0.0, 1.0])).backward()
    torch.testing.assert_close(logp.grad, t(-0.5, 0.0, -0.5))


def test_reinforce_with_and_without_baseline():
    logp, reward = t(-1.0, -2.0, grad=True), t(1.0, 0.0, grad=True)
    assert reinforce_loss(logp, reward).item() == pytest.approx(-(1 * -1 + 0 * -2) / 2)  # 0.5
    # scalar baseline 0.5: A = (0.5, -0.5); loss = -(0.5 * -1 + -0.5 * -2) / 2 = -0.25
    assert reinforce_loss(logp, reward, 0.5).item() == pytest.approx(-0.25)
    per_sample = reinforce_loss(logp, reward, t(1.0, -1.0))  # A = (0, 1): -(0 + -2) / 2 = 1
    assert per_sample.item() == pytest.approx(1.0)
    per_sample.backward()
    torch.testing.assert_close(logp.grad, t(0.0, -0.5))
    assert reward.grad is None  # the reward is a constant


def test_grpo_advantages_by_hand():
    rewards = t(1.0, 0.0, 0.0, 2.0, 2.0, 2.0).reshape(2, 3)
    # group 0: mean 1/3, population std sqrt(((2/3)^2 + 2 (1/3)^2) / 3) = sqrt(2) / 3
    std = math.sqrt(2) / 3
    expected = t(2 / 3 / std, -1 / 3 / std, -1 / 3 / std, 0.0, 0.0, 0.0).reshape(2, 3)
    torch.testing.assert_close(grpo_advantages(rewards, eps=1e-12), expected)
    torch.testing.assert_close(expected[0], t(math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2)))
    centred = grpo_advantages(rewards, scale=False)
    torch.testing.assert_close(centred, t(2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0).reshape(2, 3))
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantages(t(1.0, 2.0).reshape(2, 1))


def test_ppo_unclipped_and_clipped_regions():
    adv = t(1.0, 1.0, -1.0, -1.0, 2.0)
    # rho: in range; A>0 above 1+eps; A<0 below 1-eps; A<0 above 1+eps; A>0 below 1-eps
    rho = t(1.1, 1.5, 0.5, 1.5, 0.7)
    logp_old = t(-1.0, -2.0, -0.5, -1.5, -3.0)
    logp = (logp_old + rho.log()).detach().requires_grad_(True)
    loss = ppo_clipped_loss(logp, logp_old, adv, clip=0.2)
    # min(rho A, clip(rho) A) per sample: 1.1, 1.2 (clipped), -0.8 (clipped), -1.5, 1.4
    assert loss.item() == pytest.approx(-(1.1 + 1.2 - 0.8 - 1.5 + 1.4) / 5)
    loss.backward()
    # d/dlogp of -rho A / N = -rho A / N where unclipped, zero where the clip is active
    torch.testing.assert_close(logp.grad, t(-1.1, 0.0, 0.0, 1.5, -1.4) / 5)


def test_ppo_gradient_at_ratio_one_equals_policy_gradient():
    logp = t(-1.0, -2.5, -0.3, grad=True)
    adv = t(0.7, -1.2, 0.4)
    ppo_clipped_loss(logp, logp.detach(), adv).backward()
    g_ppo = logp.grad.clone()
    logp.grad = None
    policy_gradient_loss(logp, adv).backward()
    torch.testing.assert_close(g_ppo, logp.grad)
    torch.testing.assert_close(g_ppo, -adv / 3)


def test_kl_estimators_closed_forms():
    logp, logp_ref = t(-1.0, -0.2), t(-1.5, -0.1)
    lr = logp_ref - logp  # log r = (-0.5, 0.1)
    torch.testing.assert_close(kl_penalty(logp, logp_ref, "k1"), -lr)
    torch.testing.assert_close(kl_penalty(logp, logp_ref, "k2"), 0.5 * lr**2)
    torch.testing.assert_close(kl_penalty(logp, logp_ref, "k3"), lr.exp() - 1 - lr)
    assert kl_penalty(logp, logp_ref, "k3")[0].item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    assert kl_penalty(t(-2.0), t(-2.0), "k3").item() == 0.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, logp_ref, "k4")


def test_kl_estimator_expectations_match_exact_kl():
    """pi and pi_ref are two categoricals on 4 outcomes; E_{y~pi}[k] by enumeration and MC."""
    pi, ref = t(0.4, 0.3, 0.2, 0.1), t(0.25, 0.35, 0.3, 0.1)
    exact = (pi * (pi / ref).log()).sum().item()  # KL(pi || ref)
    logp, logp_ref = pi.log(), ref.log()
    expect = {k: (pi * kl_penalty(logp, logp_ref, k)).sum().item() for k in ("k1", "k2", "k3")}
    assert expect["k1"] == pytest.approx(exact, rel=1e-12)  # k1 and k3 are unbiased
    assert expect["k3"] == pytest.approx(exact, rel=1e-12)
    assert expect["k2"] == pytest.approx(exact, rel=0.15)  # biased, second order close
    assert expect["k2"] != pytest.approx(exact, rel=1e-3)
    # Monte Carlo: N = 400k draws; the mean is within 5 standard errors of its expectation
    y = torch.multinomial(pi, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for k in ("k1", "k2", "k3"):
        est = kl_penalty(logp[y], logp_ref[y], k)
        se = est.std().item() / math.sqrt(len(y))
        assert abs(est.mean().item() - expect[k]) < 5 * se
    assert (kl_penalty(logp[y], logp_ref[y], "k3") >= 0).all()


def test_kl_penalty_gradients_by_enumeration_of_plackett_luce_slates():
    """As a loss term (samples fixed, gradient through log pi), E_{y~pi}[grad k] is exactly:
    k1 -> 0, k2 -> grad KL(pi || ref), k3 -> grad KL(ref || pi). All 4*3 ordered slates of
    K = 2 from C = 4 candidates are enumerated, in float64."""
    from itertools import permutations

    from recsys_onpolicy.slate_policy import slate_log_prob

    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_scores = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    slates = torch.tensor([list(p) for p in permutations(range(4), 2)]).unsqueeze(0)  # (1, 12, 2)
    logp = slate_log_prob(scores, slates, 1.0).reshape(-1)  # (12,)
    logp_ref = slate_log_prob(ref_scores, slates, 1.0).reshape(-1)
    pi = logp.exp()
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-12)

    def grad(value: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(value, scores, retain_graph=True)[0]

    reverse = grad((pi * (logp - logp_ref)).sum())  # grad KL(pi || ref)
    forward = grad((logp_ref.exp() * (logp_ref - logp)).sum())  # grad KL(ref || pi)
    assert (reverse - forward).abs().max() > 0.05  # the two directions differ here
    for estimator, want in (("k1", torch.zeros_like(reverse)), ("k2", reverse), ("k3", forward)):
        expected = grad((pi.detach() * kl_penalty(logp, logp_ref, estimator)).sum())
        torch.testing.assert_close(expected, want, rtol=1e-9, atol=1e-12, msg=estimator)


def test_categorical_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    lp, lq = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen) * 2
    expected = kl_divergence(Categorical(logits=lp), Categorical(logits=lq))
    torch.testing.assert_close(categorical_kl(lp, lq), expected)
    assert categorical_kl(lp, lp + 3.0).abs().max() < 1e-6  # shift invariant, KL(p||p) = 0


def test_categorical_kl_with_masked_options():
    lp = t(1.0, 2.0, -math.inf, 0.5, grad=True)
    lq = t(0.0, 1.5, -math.inf, 1.0)
    kl = categorical_kl(lp, lq)
    kept = [0, 1, 3]
    ref = kl_divergence(Categorical(logits=lp.detach()[kept]), Categorical(logits=lq[kept]))
    assert kl.item() == pytest.approx(ref.item(), rel=1e-12)
    kl.backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[2] == 0  # no NaN through the mask
    # q masking an option p can pick: the KL is infinite
    assert categorical_kl(t(0.0, 0.0), t(0.0, -math.inf)).item() == math.inf
