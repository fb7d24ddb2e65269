"""Plackett-Luce slate policy over candidate scores: sample, score, greedy, first position.

A slate of K items is drawn from C candidates without replacement: position j picks candidate c
among those not yet chosen with probability exp(s_c / t) / sum_{c' remaining} exp(s_{c'} / t).
The log-probability of a slate y is therefore

    log pi(y) = sum_{j<K} [ s_{y_j} / t - logsumexp_{c not in y_<j} s_c / t ].

Sampling uses the Gumbel-top-k trick (Kool et al. 2019, "Stochastic Beams and Where to Find
Them"): add i.i.d. Gumbel(0, 1) noise to s / t and take the top K in order; the ordered result is
an exact Plackett-Luce sample. A score of -inf masks a candidate: it is never sampled and has
probability zero at every position. Slates are positions into the candidate axis (long).

Every function is vectorised over any leading batch dims (B,) or (B, G); every random draw takes
an explicit ``torch.Generator`` on the scores' device.
"""
from __future__ import annotations

import torch

from simulators.expect import expect


def _check(scores: torch.Tensor, k: int, temperature: float) -> None:
    if scores.dim() < 1 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a float tensor (..., C), got {scores.dtype} {tuple(scores.shape)}"
        )
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"slate size k={k} must be in [1, C={scores.shape[-1]}]")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy_slates for t -> 0)")
    if not scores.numel():
        return
    n_open = torch.isfinite(scores).sum(dim=-1)  # (...,) candidates not masked
    fix = "mask fewer candidates or lower k"
    expect(n_open.min() >= k, ValueError,
           f"a request has fewer than k={k} candidates with finite score; {fix}",
           lambda: f"a request has only {int(n_open.min())} candidates with finite score, fewer "
                   f"than k={k}; {fix}")


def sample_slates(
    scores: torch.Tensor, k: int, gen: torch.Generator, temperature: float = 1.0
) -> torch.Tensor:
    """Sample one Plackett-Luce slate per row with the Gumbel-top-k trick.

    Args:
        scores: (..., C) scores, e.g. (B, C); -inf masks a candidate.
        k: slate size K.
        gen: generator on ``scores.device``.
        temperature: t > 0; the scores are divided by it.
    Returns:
        (..., K) long positions into the candidate axis, in slate order, no duplicates.
    """
    _check(scores, k, temperature)
    work = torch.promote_types(scores.dtype, torch.float32)
    u = torch.rand(scores.shape, generator=gen, device=scores.device, dtype=work)  # (..., C)
    # keys = scores / t + Gumbel noise -log(-log(u)), in place on u (u < 1 always)
    keys = u.clamp_min_(torch.finfo(work).tiny).log_().neg_().log_().neg_()  # (..., C)
    keys += scores.to(work) / temperature  # masked stay -inf
    return keys.topk(k, dim=-1, sorted=True).indices


def sample_groups(
    scores: torch.Tensor, k: int, g: int, gen: torch.Generator, temperature: float = 1.0
) -> torch.Tensor:
    """Sample G independent slates per request (the group of GRPO).

    Args:
        scores: (B, C) scores; -inf masks a candidate.
        k, gen, temperature: as in :func:`sample_slates`.
        g: group size G >= 1.
    Returns:
        (B, G, K) long positions into the candidate axis.
    """
    if g < 1:
        raise ValueError(f"group size g={g} must be >= 1")
    grouped = scores.unsqueeze(-2).expand(*scores.shape[:-1], g, scores.shape[-1])  # (B, G, C)
    return sample_slates(grouped, k, gen, temperature)


def slate_log_prob(
    scores: torch.Tensor, slates: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Exact Plackett-Luce log-probability of given slates, differentiable w.r.t. the scores.

    Args:
        scores: (B, C) or (B, G, C) scores; -inf masks a candidate. With fewer leading dims than
            ``slates`` (e.g. (B, C) with (B, G, K) slates) a group axis is inserted and broadcast.
        slates: (B, K) or (B, G, K) long positions into the candidate axis, no duplicates.
        temperature: t > 0.
    Returns:
        (B,) or (B, G) log pi(slate); -inf for a slate that contains a masked candidate.
    """
    _check(scores, slates.shape[-1], temperature)
    n_cand = scores.shape[-1]
    wanted = f"slates must be long positions in [0, C={n_cand})"
    if slates.dtype != torch.long:
        raise ValueError(f"{wanted}, got {slates.dtype}")
    if slates.numel():
        lo, hi = torch.aminmax(slates)
        expect((lo >= 0) & (hi < n_cand), ValueError, wanted,
               lambda: f"{wanted}, got values in [{int(lo)}, {int(hi)}]")
    while scores.dim() < slates.dim():
        scores = scores.unsqueeze(-2)  # (B, 1, C): broadcast over the group axis
    z = scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature  # (..., C)
    batch = torch.broadcast_shapes(z.shape[:-1], slates.shape[:-1])
    # Flatten to contiguous (N, C) / (N, K): gathers and their backward on a broadcast (expanded)
    # view are about 10x slower than on a materialised copy.
    z = z.expand(*batch, n_cand).reshape(-1, n_cand)  # (N, C)
    flat = slates.expand(*batch, slates.shape[-1]).reshape(-1, slates.shape[-1])  # (N, K)
    if z.requires_grad and torch.is_grad_enabled():
        logp = _PlackettLuceLogProb.apply(z, flat)  # (N,)
    else:
        logp = _pl_terms(z, flat)[0]
    return logp.reshape(batch)


def _pl_terms(z: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Log-probabilities (N,) of slates flat (N, K) under scores z (N, C), and what their
    gradient needs: the chosen scores (N, K), the normalisers L (N, K), and exp(z - m) (N, C)
    for the candidates no position took (0 for the placed ones) with its shift m (N, 1).

    Position j's normaliser L_j is logsumexp over the candidates not placed before j: the ones
    never placed ("rest", one masked logsumexp over C) plus the slate's own items j..K-1, so
    L_{K-1} = logaddexp(rest, chosen_{K-1}) and L_j = logaddexp(chosen_j, L_{j+1}).
    """
    chosen = z.gather(-1, flat)  # (N, K)
    unplaced = torch.ones_like(z, dtype=torch.bool).scatter_(-1, flat, False)  # (N, C)
    expect(((z.shape[-1] - unplaced.sum(-1)) == flat.shape[-1]).all(), ValueError,
           "slates contain a duplicate candidate; a Plackett-Luce slate has none")
    rest_z = z.masked_fill(~unplaced, float("-inf"))  # (N, C)
    shift = rest_z.amax(-1, keepdim=True)  # (N, 1)
    shift = shift.masked_fill(~torch.isfinite(shift), 0.0)  # no candidate left: rest = -inf
    rest_exp = torch.exp(rest_z - shift)  # (N, C), 0 where placed or masked
    rest = rest_exp.sum(-1, keepdim=True).log_().add_(shift)  # (N, 1)
    norm = [torch.logaddexp(rest, chosen[:, -1:])]  # L_{K-1}, then backwards to L_0
    for j in range(flat.shape[-1] - 2, -1, -1):
        norm.append(torch.logaddexp(chosen[:, j:j + 1], norm[-1]))
    norm = torch.cat(norm[::-1], dim=-1)  # (N, K)
    return (chosen - norm).sum(-1), chosen, norm, rest_exp, shift


class _PlackettLuceLogProb(torch.autograd.Function):
    """:func:`_pl_terms`'s log-probability with its gradient written out (autograd through
    logsumexp, the position recursion and the gathers costs about twice as much).

    With L_j the normaliser of position j (non-increasing in j: the remaining set shrinks):

    - a candidate no position took is in every normaliser:
      d log pi / d z_c = -sum_j exp(z_c - L_j) = -exp(z_c - L_{K-1}) sum_j exp(L_{K-1} - L_j);
    - the candidate placed at p is in the normalisers j <= p:
      d log pi / d z_c = 1 - exp(z_c - L_p) P_p with P_p = sum_{j<=p} exp(L_p - L_j), i.e.
      P_0 = 1 and P_p = 1 + exp(L_p - L_{p-1}) P_{p-1}.

    Every exponent used is <= 0 (a score is at most the logsumexp of a set that holds it), so
    nothing overflows; masked candidates (-inf) get a zero gradient.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        logp, chosen, norm, rest_exp, shift = _pl_terms(z, flat)
        ctx.save_for_backward(flat, chosen, norm, rest_exp, shift)
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat, chosen, norm, rest_exp, shift = ctx.saved_tensors
        go = grad_logp.unsqueeze(-1)  # (N, 1)
        last = norm[:, -1:]  # (N, 1) L_{K-1}
        # never placed: exp(z - L_{K-1}) = rest_exp * exp(shift - L_{K-1}), both factors <= 1
        # (the clamp only acts where no candidate is left over: there shift = 0, rest_exp = 0)
        never = torch.exp(last - norm).sum(-1, keepdim=True)  # (N, 1)
        grad = rest_exp * (torch.exp((shift - last).clamp_max(0.0)) * never * -go)  # (N, C)
        steps = torch.exp(norm[:, 1:] - norm[:, :-1])  # (N, K-1) exp(L_p - L_{p-1})
        cum = [torch.ones_like(last)]  # P_0
        for p in range(steps.shape[-1]):
            cum.append(torch.addcmul(torch.ones_like(last), steps[:, p:p + 1], cum[-1]))
        placed = torch.exp(chosen - norm) * torch.cat(cum, dim=-1)  # (N, K)
        return grad.scatter_(-1, flat, go * (1.0 - placed)), None


def greedy_slates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The K highest-scoring candidates in descending order (the mode of Plackett-Luce).

    Args:
        scores: (..., C); -inf masks a candidate.
    Returns:
        (..., K) long positions into the candidate axis.
    """
    _check(scores, k, 1.0)
    return scores.topk(k, dim=-1, sorted=True).indices


def first_position_probs(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact distribution of the first slate position: softmax(scores / t), (..., C) -> (..., C).

    Use with ``objectives.categorical_kl(scores_0 / t, scores_t / t)`` for the exact
    first-position KL between two policies.
    """
    _check(scores, 1, temperature)
    return torch.softmax(scores / temperature, dim=-1)
