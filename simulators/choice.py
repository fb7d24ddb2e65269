"""Choice models: from attraction logits of a slate to click probabilities and sampled clicks.

Pure functions on tensors. ``logits`` are the attraction logits of the K slate items in slate
order, (B, K). Every model returns the *marginal* click probability of each position:

- PBM (position-based model): position k is examined with probability
  ``exam_k = (k+1)^-position_decay`` and clicked if examined and attracted:
  ``p_k = exam_k * sigmoid(l_k)``; clicks are independent across positions.
- Cascade: the user scans top-down and clicks the first attractive item, then stops:
  ``p_k = sigmoid(l_k) * prod_{j<k} (1 - sigmoid(l_j))``; at most one click.
- MNL with a no-click option: ``p_k = exp(l_k + log exam_k) / (exp(l_0') + sum_j exp(l_j + log
  exam_j))`` with ``l_0'`` the no-click logit; at most one click (RecSim's
  ``MultinomialLogitChoiceModel``).
- Proportional with a no-click option: ``s_k = exam_k * max(l_k - m, 0)``, ``p_k = s_k / (n - m +
  sum_j s_j)`` with ``m`` the min normalizer and ``n`` the no-click score; at most one click
  (RecSim's ``MultinomialProportionalChoiceModel``, which its interest-evolution environment
  uses with m = -1, n = 1; RecSim asserts ``l_k >= m`` where this counts a lower score as 0).

Cascade, MNL and proportional clicks are mutually exclusive events, so they are sampled with one
uniform per slate by inverting the cumulative marginals; PBM draws one uniform per position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from simulators.config import ChoiceConfig


def examination(k: int, position_decay: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Examination probability per position, (K,): (k+1)^-position_decay."""
    return (torch.arange(k, device=device, dtype=torch.float32) + 1.0).pow(-position_decay)


def pbm_probs(logits: torch.Tensor, exam: torch.Tensor) -> torch.Tensor:
    """(B, K) logits, (K,) examination -> (B, K) click probabilities."""
    return exam * torch.sigmoid(logits)


def cascade_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K) probability that position k gets the (only) click."""
    # log sigmoid(x) = -softplus(-x); F.logsigmoid is avoided: on CPU it can cost milliseconds
    # on tiny inputs (it always enters a parallel region).
    log_skip = -F.softplus(logits[:, :-1])  # (B, K-1) log(1 - attraction) above position k
    log_reach = F.pad(torch.cumsum(log_skip, dim=1), (1, 0))  # (B, K) exclusive cumulative sum
    return torch.exp(log_reach - F.softplus(-logits))


def mnl_probs(
    logits: torch.Tensor, no_click_logit: float, position_logit: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K) logits (+ optional (K,) position log-weights) -> (B, K) choice probabilities."""
    if position_logit is not None:
        logits = logits + position_logit
    # A softmax over [logits, no_click], written out: torch.softmax is slow on short rows.
    top = logits.amax(dim=1, keepdim=True).clamp(min=float(no_click_logit))  # (B, 1)
    e = torch.exp(logits - top)  # (B, K)
    denom = e.sum(dim=1, keepdim=True) + torch.exp(float(no_click_logit) - top)
    return e / denom


def proportional_probs(
    logits: torch.Tensor, no_click_score: float, min_normalizer: float,
    exam: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K) scores (+ optional (K,) examination weights) -> (B, K) choice probabilities
    ``s_k / (no_click_score - min_normalizer + sum_j s_j)``, ``s = exam * max(l - m, 0)``."""
    s = (logits - min_normalizer).clamp_min(0.0)  # (B, K)
    if exam is not None:
        s = s * exam
    return s / (s.sum(dim=1, keepdim=True) + (no_click_score - min_normalizer))


def click_probs(cfg: ChoiceConfig, logits: torch.Tensor) -> torch.Tensor:
    """Marginal click probability per slate position under ``cfg.model``, (B, K)."""
    k = logits.shape[1]
    if cfg.model == "pbm":
        return pbm_probs(logits, examination(k, cfg.position_decay, logits.device))
    if cfg.model == "cascade":
        return cascade_probs(logits)
    if cfg.model == "proportional":
        exam = examination(k, cfg.position_decay, logits.device) if cfg.position_decay > 0 else None
        return proportional_probs(logits, cfg.no_click_logit, cfg.min_normalizer, exam)
    pos = None
    if cfg.position_decay > 0:
        pos = -cfg.position_decay * torch.log1p(torch.arange(k, device=logits.device,
                                                             dtype=logits.dtype))
    return mnl_probs(logits, cfg.no_click_logit, pos)


def top_position_probs(cfg: ChoiceConfig, logits: torch.Tensor) -> torch.Tensor:
    """Click probability of each item if shown alone at the top position, (B, N)."""
    if cfg.model == "mnl":
        return torch.sigmoid(logits - cfg.no_click_logit)
    if cfg.model == "proportional":
        return proportional_probs(logits.reshape(-1, 1), cfg.no_click_logit,
                                  cfg.min_normalizer).view_as(logits)
    return torch.sigmoid(logits)


def at_most_one_click(cfg: ChoiceConfig) -> bool:
    """Whether the model allows at most one click per slate."""
    return cfg.model in ("cascade", "mnl", "proportional")


def sample_independent(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One Bernoulli per position, (B, K) float 0/1."""
    u = torch.rand(probs.shape, generator=gen, device=probs.device)
    return (u < probs).to(probs.dtype)


def sample_choice(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Position of the one click of each row, K for none, (B, 1) long, with P(click at k) =
    probs[:, k] (mutually exclusive clicks); one uniform per row."""
    b = probs.shape[0]
    u = torch.rand(b, 1, generator=gen, device=probs.device)  # (B, 1)
    # The number of cumulative marginals <= u (they never decrease: probs >= 0).
    return torch.searchsorted(torch.cumsum(probs, dim=1), u, right=True)  # (B, 1)


def sample_exclusive(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """At most one click per row with P(click at k) = probs[:, k]; one uniform per row, (B, K)."""
    chosen = sample_choice(probs, gen)  # (B, 1); K = no click
    return (torch.arange(probs.shape[1], device=probs.device) == chosen).to(probs.dtype)


def sample_clicks(cfg: ChoiceConfig, probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Clicks (B, K) float 0/1 from the marginals of :func:`click_probs`."""
    if at_most_one_click(cfg):
        return sample_exclusive(probs, gen)
    return sample_independent(probs, gen)
