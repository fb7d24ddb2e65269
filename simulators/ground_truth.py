"""Ground truth: true click probabilities for any (user, item, position) and the oracle slate.

These read the world's current state (interests, quality, fatigue) and never change it. The
attraction logit of item i for user u is

    affinity_scale * affinity(u, i) + quality_weight * quality_i + click_bias - fatigue(u, topic_i)

with ``affinity(u, i) = (1/tau) * log sum_m w_um * exp(tau * <z_um, e_i>)``, a soft maximum over
the user's interest modes (tau = mode_sharpness; with one mode it is just <z_u, e_i>). The choice
model (:mod:`simulators.choice`) turns the logits of a slate into per-position probabilities.
"""
from __future__ import annotations

import torch

from simulators import choice
from simulators.world import World


def take_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for any index shape, via one flat index_select (faster than fancy indexing)."""
    out = table.index_select(0, idx.reshape(-1))
    return out.view(*idx.shape, *table.shape[1:])


def mode_affinities(world: World, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Inner products <z_um, e_i>, (B, N, M), for users (B,) and items (B, N)."""
    interests = world.users.interests  # (U, M, D)
    _, m, d = interests.shape
    if world.cfg.items.representation == "topics":
        # One-hot items: <z_um, e_i> is the user's interest in the item's topic; one flat gather.
        topic = take_rows(world.items.topic, items)  # (B, N)
        base = users * (m * d)  # (B,) offset of the user's first mode
        if m == 1:
            return take_rows(interests.view(-1), base.unsqueeze(1) + topic).unsqueeze(2)
        base = base.unsqueeze(1) + torch.arange(m, device=users.device) * d  # (B, M)
        flat = base.unsqueeze(2) + topic.unsqueeze(1)  # (B, M, N)
        return take_rows(interests.view(-1), flat).transpose(1, 2)  # (B, N, M)
    emb = take_rows(world.items.emb, items)  # (B, N, D)
    z = take_rows(interests, users)  # (B, M, D)
    return torch.bmm(emb, z.transpose(1, 2))  # (B, N, M)


def affinity(world: World, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Soft maximum over modes of the mode affinities, weighted by mode weights, (B, N)."""
    x = mode_affinities(world, users, items)  # (B, N, M)
    if x.shape[2] == 1:
        return x[:, :, 0]  # one mode: weight 1, log 1 = 0
    tau = world.cfg.choice.mode_sharpness
    log_w = torch.log(take_rows(world.users.mode_weights, users)).unsqueeze(1)  # (B, 1, M)
    return torch.logsumexp(tau * x + log_w, dim=2) / tau


def attraction_logits(world: World, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Attraction logit of each item for its row's user, (B, N)."""
    c = world.cfg.choice
    logits = affinity(world, users, items)
    if c.affinity_scale != 1:
        logits = c.affinity_scale * logits
    if c.quality_weight != 0:
        logits = logits + c.quality_weight * take_rows(world.items.quality, items)
    if c.click_bias != 0:
        logits = logits + c.click_bias
    fatigue = world.users.fatigue
    if fatigue is not None:
        t = fatigue.shape[1]
        topic = take_rows(world.items.topic, items)  # (B, N)
        seen = take_rows(fatigue.view(-1), users.unsqueeze(1) * t + topic)  # (B, N)
        logits = logits - world.cfg.dynamics.fatigue.strength * seen
    return logits


def click_probs(world: World, users: torch.Tensor, slate_items: torch.Tensor) -> torch.Tensor:
    """True marginal click probability of each slate position, (B, K), for slates of item ids."""
    return choice.click_probs(world.cfg.choice, attraction_logits(world, users, slate_items))


def expected_clicks(world: World, users: torch.Tensor, slate_items: torch.Tensor) -> torch.Tensor:
    """Expected number of clicks on each slate, (B,)."""
    return click_probs(world, users, slate_items).sum(dim=1)


def item_attraction(world: World, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Click probability of each item shown alone at the top position, (B, N)."""
    return choice.top_position_probs(world.cfg.choice, attraction_logits(world, users, items))


def oracle_slate(world: World, users: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Positions into ``candidates`` (B, C) of the slate with the most expected clicks, (B, K).

    For every choice model the optimum is the K most attractive candidates in decreasing order:
    PBM, MNL and proportional choice reward each item monotonically and examination decreases
    with position (rearrangement inequality); the cascade's click probability
    1 - prod(1 - a_k) depends only on the set.
    """
    logits = attraction_logits(world, users, candidates)  # (B, C)
    return torch.topk(logits, world.cfg.slate_size, dim=1, sorted=True).indices

