"""State dynamics as pure functions: tensors in, new tensors out (the day driver writes them back).

- Click history: clicked items are pushed to the front of the user's history (most recent first;
  within a slate the lower position counts as the later click).
- Consumption reinforcement (`toward`): each mode moves toward the clicked items in proportion to
  its responsibility for them (the posterior of the soft maximum over modes): the homogenising
  feedback loop. `recsim`: RecSim's interest evolution on the clicked topic's coordinate.
- Fatigue: each impression adds one to the user's exposure count of the item's topic; counts
  decay daily; attraction logits subtract strength * count (see ground_truth).
- Interest drift: a daily Ornstein-Uhlenbeck step toward the cohort's mode centres.
- Retention: a request's satisfaction (clicks, plus clicked quality) feeds a moving average;
  after a request a user leaves with probability churn_max * exp(-satisfaction / scale); users who
  left come back at return_rate.
"""
from __future__ import annotations

import torch

from simulators.config import RetentionConfig


def push_history(history: torch.Tensor, items: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
    """New histories (B, H): the slate's clicked items (B, K), latest first, then the old ones."""
    b, h = history.shape
    k = items.shape[1]
    if h == 0:
        return history
    clicked = clicks > 0  # (B, K)
    n = clicked.sum(dim=1, keepdim=True)  # (B, 1) clicks in this slate
    # Rank of a click counted from the bottom (lower positions are later clicks): 0 = latest.
    rank = n - torch.cumsum(clicked, dim=1)  # (B, K)
    front = torch.full((b, k + 1), -1, dtype=history.dtype, device=history.device)
    front.scatter_(1, torch.where(clicked, rank, k), items)  # non-clicks -> dump column k
    j = torch.arange(h, device=history.device)  # (H,)
    from_front = front[:, :k].gather(1, j.clamp(max=k - 1).expand(b, h))
    from_old = history.gather(1, (j - n).clamp(min=0))
    return torch.where(j < n, from_front, from_old)


def push_one(history: torch.Tensor, item: torch.Tensor, clicked: torch.Tensor) -> torch.Tensor:
    """New histories (B, H) when a slate has at most one click: ``item`` (B,) is pushed to the
    front where ``clicked`` (B,) is True. Same result as :func:`push_history`, fewer passes."""
    if history.shape[1] == 0:
        return history
    shifted = torch.cat([item.unsqueeze(1), history[:, :-1]], dim=1)  # (B, H)
    return torch.where(clicked.unsqueeze(1), shifted, history)


def mode_responsibility(x: torch.Tensor, mode_weights: torch.Tensor, tau: float) -> torch.Tensor:
    """Posterior of each mode given an item: softmax_m(log w_m + tau * x_m); x (B, K, M) -> same."""
    return torch.softmax(tau * x + torch.log(mode_weights).unsqueeze(1), dim=2)


def reinforce_toward(
    interests: torch.Tensor, mode_weights: torch.Tensor, item_emb: torch.Tensor,
    clicks: torch.Tensor, rate: float, tau: float,
) -> torch.Tensor:
    """Move modes toward clicked items. interests (B, M, D), mode_weights (B, M), item_emb
    (B, K, D), clicks (B, K) -> new interests (B, M, D).

    Mode m takes a step of size min(rate * S_m, 1) toward the responsibility-weighted mean of the
    clicked embeddings, S_m being its total responsibility for the clicks (so one click with full
    responsibility moves it by ``rate`` of the distance, and no step overshoots).
    """
    x = torch.bmm(item_emb, interests.transpose(1, 2))  # (B, K, M)
    a = clicks.unsqueeze(2) * mode_responsibility(x, mode_weights, tau)  # (B, K, M)
    total = a.sum(dim=1)  # (B, M)
    target = torch.bmm(a.transpose(1, 2), item_emb) / total.clamp(min=1e-12).unsqueeze(2)
    step = (rate * total).clamp(max=1.0).unsqueeze(2)  # (B, M, 1)
    return interests + step * (target - interests)


def recsim_interest_step(x: torch.Tensor, u: torch.Tensor, rate: float) -> torch.Tensor:
    """RecSim's interest evolution of the clicked topic's coordinate x (B,) given uniforms u (B,).

    alpha = rate * (1 - |x|); step = alpha * (1 - x); added when u < (x + 1) / 2, else
    subtracted; clipped to [-1, 1] (recsim/environments/interest_evolution.py, update_state).
    """
    step = rate * (1.0 - x.abs()) * (1.0 - x)
    sign = torch.where(u < (x + 1.0) / 2.0, 1.0, -1.0)
    return (x + sign * step).clamp(-1.0, 1.0)


def add_exposure(fatigue: torch.Tensor, slate_topics: torch.Tensor) -> torch.Tensor:
    """Exposure counts (B, T) after showing a slate whose items have topics (B, K)."""
    return fatigue.scatter_add(1, slate_topics, torch.ones_like(slate_topics, dtype=fatigue.dtype))


def request_satisfaction(clicks: torch.Tensor, quality: torch.Tensor,
                         quality_weight: float) -> torch.Tensor:
    """Satisfaction of each request (B,): clicks + quality_weight * clicked quality."""
    return (clicks * (1.0 + quality_weight * quality)).sum(dim=1)


def update_satisfaction(satisfaction: torch.Tensor, request: torch.Tensor,
                        memory: float) -> torch.Tensor:
    """Exponential moving average of per-request satisfaction, (B,)."""
    return (1.0 - memory) * satisfaction + memory * request


def drift(interests: torch.Tensor, centres: torch.Tensor, pull: float, noise: float,
          gen: torch.Generator) -> torch.Tensor:
    """One daily Ornstein-Uhlenbeck step of interests (U, M, D) toward centres (U, M, D)."""
    step = torch.randn(interests.shape, generator=gen, device=interests.device)
    return interests + pull * (centres - interests) + noise * step


def churn(active: torch.Tensor, satisfaction: torch.Tensor, requested: torch.Tensor,
          cfg: RetentionConfig, gen: torch.Generator) -> torch.Tensor:
    """New active flags (U,): requesters may leave, users who had left may come back."""
    u_leave = torch.rand(active.shape, generator=gen, device=active.device)
    u_back = torch.rand(active.shape, generator=gen, device=active.device)
    p_leave = cfg.churn_max * torch.exp(-satisfaction.clamp(min=0.0) / cfg.satisfaction_scale)
    leaves = requested & active & (u_leave < p_leave)
    returns = ~active & (u_back < cfg.return_rate)
    return (active & ~leaves) | returns
