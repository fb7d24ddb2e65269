"""Loss functions shared by both domains (recsys slates and LM completions).

Every function is pure: tensors in, a scalar loss (or per-sample tensor) out, no state. A
"sequence" is a slate of K items or a completion of T tokens; callers pass the *summed*
log-probability of each sequence, ``logp`` of shape (N,), so the same code serves both.

Conventions
- Losses are minimised and averaged over the N sequences in the batch (mean, not sum), so
  the learning rate does not depend on batch size.
- Rewards / advantages are treated as constants (detached here, whatever the caller passes).
- KL estimators follow Schulman's "Approximating KL divergence" note: with the ratio
  r = pi_ref(y) / pi(y) for y ~ pi, k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r.
  All three estimate KL(pi || pi_ref) from samples of pi; k3 is unbiased and non-negative.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k2", "k3"]


def pointwise_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on click labels, mean over impressions.

    Args:
        logits: (N,) raw scores.
        labels: (N,) 0/1 clicks (any float dtype).
    """
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def sequence_nll(logp: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """SFT loss: negative log-likelihood of kept sequences, mean over sequences.

    Args:
        logp: (N,) log-probability of each sequence under the policy being trained.
        weights: (N,) optional 0/1 keep mask (the reward filter of Self-SFT / Iterative-SFT);
            the mean is over kept sequences. All weights zero gives a zero loss with a graph.
    """
    if weights is None:
        return -logp.mean()
    w = weights.to(logp.dtype).detach()
    return -(w * logp).sum() / w.sum().clamp_min(1.0)


def reinforce_loss(
    logp: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor | float | None = None
) -> torch.Tensor:
    """REINFORCE: -mean((R - b) * log pi(y)).

    With ``baseline=None`` the reward is the weight (the paper's "REINFORCE, no baseline").
    ``baseline`` may be a scalar (e.g. the batch mean reward) or a per-sample (N,) tensor.
    """
    adv = reward.detach().to(logp.dtype)
    if baseline is not None:
        adv = adv - (baseline.detach() if torch.is_tensor(baseline) else baseline)
    return -(adv * logp).mean()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """Group-normalised advantages (DeepSeekMath GRPO).

    Args:
        rewards: (B, G) rewards of G sequences sampled for each of B contexts.
        eps: added to the group std before dividing.
        scale: divide by the group std (GRPO); False gives plain group-mean centring (Dr. GRPO).
    Returns:
        (B, G) advantages A = (r - mean_g r) / (std_g r + eps). The std is the population std
        (unbiased=False); a group with equal rewards gets zero advantage.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"grpo_advantages needs rewards of shape (B, G) with G >= 2, got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean(A * log pi(y)) with A detached; GRPO with one update per batch (ratio = 1)."""
    return -(advantages.detach().to(logp.dtype) * logp).mean()


def ppo_clipped_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO clipped surrogate: -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)).

    Args:
        logp: (N,) log-prob under the current policy (with grad).
        logp_old: (N,) log-prob under the policy that sampled the data (no grad).
        advantages: (N,) advantages (detached here).
        clip: epsilon of the trust region.
    At the first epoch rho = 1 and the gradient equals :func:`policy_gradient_loss`'s.
    """
    adv = advantages.detach().to(logp.dtype)
    ratio = torch.exp(logp - logp_old.detach())
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * adv
    return -torch.minimum(unclipped, clipped).mean()


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from sequences y ~ pi.

    Args:
        logp: (N,) log pi(y) (with grad when used as a penalty).
        logp_ref: (N,) log pi_ref(y) under the frozen reference policy.
        estimator: 'k1' (-log r), 'k2' ((log r)^2 / 2) or 'k3' ((r - 1) - log r), r = pi_ref/pi.
    Returns:
        (N,) estimates; take the mean for the penalty term beta * E[KL].

    As *values*, k1 and k3 are unbiased estimates of KL(pi || pi_ref) and k2 is biased. As a
    *loss term* (the samples held fixed, the gradient taken through ``logp`` only, which is how
    GRPO adds it) their expected gradients differ (Schulman's note; checked by enumeration in
    the tests):

    - k1: E_pi[grad log pi] = 0, no pull towards pi_ref at all (regimes refuse it);
    - k2: the gradient of KL(pi || pi_ref), the reverse KL;
    - k3: the gradient of KL(pi_ref || pi), the forward KL (the DeepSeekMath GRPO convention).
    """
    log_ratio = logp_ref.detach() - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) between categorical distributions given by logits, over the last dim.

    Args:
        logits_p, logits_q: (..., C) unnormalised log-probabilities; -inf masks an option.
    Returns:
        (...,) KL in nats.
    """
    logp = torch.log_softmax(logits_p, dim=-1)
    logq = torch.log_softmax(logits_q, dim=-1)
    p = logp.exp()
    terms = p * torch.where(p > 0, logp - logq, torch.zeros_like(p))  # where inside: no NaN grad
    return terms.sum(dim=-1)
