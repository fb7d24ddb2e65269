"""KL(pi_0 || pi_t) between the base policy and the current one, per context.

Definition (``../shared/ARCHITECTURE.md``, "Probes"): E over contexts of KL(pi_0 || pi_t),
exact on the first slate position and Monte Carlo on whole slates. Both policies are
Plackett-Luce over their scores at the same (serving) temperature t.

- First position: the first slate position is softmax(s / t), so
  KL(pi_0 || pi_t) = ``categorical_kl(s_0 / t, s_t / t)`` exactly (note the order: the base
  policy's logits come first).
- Whole slates: slates y ~ pi_0, KL ~= mean of log pi_0(y) - log pi_t(y) (``slate_log_prob``):
  the k1 estimator, unbiased for the slate KL, non-negative only on average.

The direction is the one of RL's Razor (Shenfeld et al. 2025): the forward KL from the base,
measured on the base policy's own samples.
"""
from __future__ import annotations

import torch

from recsys_onpolicy.objectives import categorical_kl
from recsys_onpolicy.slate_policy import sample_groups, slate_log_prob


@torch.no_grad()
def first_position_kl(
    scores_0: torch.Tensor, scores_t: torch.Tensor, temperature: float = 1.0,
) -> torch.Tensor:
    """Exact KL(pi_0 || pi_t) of the first slate position, (B, C), (B, C) -> (B,) nats."""
    if scores_0.shape != scores_t.shape:
        raise ValueError(f"scores_0 {tuple(scores_0.shape)} and scores_t "
                         f"{tuple(scores_t.shape)} must have the same shape (B, C)")
    if not temperature > 0:
        raise ValueError(f"temperature = {temperature}: must be > 0")
    return categorical_kl(scores_0.double() / temperature, scores_t.double() / temperature)


@torch.no_grad()
def slate_kl(
    scores_0: torch.Tensor, scores_t: torch.Tensor, k: int, n_samples: int,
    gen: torch.Generator, temperature: float = 1.0,
) -> torch.Tensor:
    """Monte Carlo KL(pi_0 || pi_t) on whole slates of size k, (B, C), (B, C) -> (B,) nats.

    Draws ``n_samples`` slates per context from pi_0 (Gumbel-top-k with ``gen``) and averages
    log pi_0(y) - log pi_t(y). Exactly 0 when the scores are equal.
    """
    if scores_0.shape != scores_t.shape:
        raise ValueError(f"scores_0 {tuple(scores_0.shape)} and scores_t "
                         f"{tuple(scores_t.shape)} must have the same shape (B, C)")
    b, g = scores_0.shape[0], n_samples
    slates = sample_groups(scores_0, k, g, gen, temperature).view(b * g, k)  # (B*G, K)
    # score rows repeated per sample: the flat (B*G, C) path of slate_log_prob is ~10x faster
    # than broadcasting (B, C) scores over (B, G, K) slates (measured on CPU)
    logp_0 = slate_log_prob(scores_0.double().repeat_interleave(g, 0), slates, temperature)
    logp_t = slate_log_prob(scores_t.double().repeat_interleave(g, 0), slates, temperature)
    return (logp_0 - logp_t).view(b, g).mean(dim=1)  # (B,)
