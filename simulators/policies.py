"""Reference slate policies the simulator ships with (the learned ones live in recsys_onpolicy).

Each is a callable ``policy(requests) -> (slates (B, K) long positions, log_propensity (B,))``:

- :func:`uniform_random_policy`: every ordered slate of K distinct candidates equally likely
  (the probe policy of the cohort-holdout AUC); exact log-propensity -log(C!/(C-K)!).
- :func:`oracle_policy`: the ground-truth best slate (deterministic, log-propensity 0).
- :func:`fixed_positions_policy`: candidate positions 0..K-1 (deterministic); with purely random
  retrieval these are K uniformly random distinct items, at no cost (the benchmark's policy).
"""
from __future__ import annotations

import math

import torch

from simulators.day import Policy, Requests
from simulators.ground_truth import oracle_slate
from simulators.world import World


def uniform_slate_log_propensity(n_candidates: int, slate_size: int) -> float:
    """log P(one ordered slate) under uniform sampling without replacement: -log(C!/(C-K)!)."""
    return -(math.lgamma(n_candidates + 1) - math.lgamma(n_candidates - slate_size + 1))


def uniform_random_policy(slate_size: int, gen: torch.Generator) -> Policy:
    """K distinct candidates in uniformly random order (top-K of i.i.d. uniform keys)."""

    def policy(requests: Requests):
        b, c = requests.candidates.shape
        keys = torch.rand(b, c, generator=gen, device=requests.candidates.device)
        slates = torch.topk(keys, slate_size, dim=1).indices  # (B, K)
        logp = torch.full((b,), uniform_slate_log_propensity(c, slate_size),
                          device=requests.candidates.device)
        return slates, logp

    return policy


def oracle_policy(world: World) -> Policy:
    """The slate with the most expected clicks under the world's current state."""

    def policy(requests: Requests):
        slates = oracle_slate(world, requests.users, requests.candidates)
        return slates, torch.zeros(len(requests), device=slates.device)

    return policy


def fixed_positions_policy(slate_size: int) -> Policy:
    """Always the first K candidate positions."""

    def policy(requests: Requests):
        b = len(requests)
        device = requests.candidates.device
        slates = torch.arange(slate_size, device=device).expand(b, slate_size)
        return slates, torch.zeros(b, device=device)

    return policy
