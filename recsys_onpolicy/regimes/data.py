"""The data sources of the regimes: which slates a regime trains on, and their rewards.

A request set is anything with ``users (B,), history (B,H), candidates (B,C),
candidate_topics (B,C)`` and ``select(index)`` (``simulators.day.DayLog`` or a slice of it).
Every source returns a :class:`SlateBatch` aligned with its requests: G slates per request as
positions into the request's candidates, and one reward per slate.

- ``logged``: the slate that was served and its observed clicks (G = 1).
- ``teacher``: the ground truth's oracle slate (G = 1; simulation only).
- ``initial`` / ``fresh``: G Plackett-Luce samples from the frozen pi_0 / the current policy.
  The simulator answers every sampled slate (``simulators.day.respond``) without changing its
  state: G answers for one request exist only in simulation.
- ``traces``: the slates a companion RL learner samples while it trains (see
  :func:`recsys_onpolicy.regimes.sft.traces_data`).

The reward of a slate is its number of sampled clicks, or its expected number of clicks under
the ground truth (``reward: expected``, lower variance, simulation only). It is the answer of the
world as it is when the regime trains: with ``cadence: daily`` that is after the day's feedback
and end-of-day dynamics (drift, churn), a slightly later user state than the one served; with
``cadence: streaming`` it is after the served batch's feedback.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from recsys_onpolicy.slate_policy import sample_groups
from simulators import ground_truth
from simulators.day import respond

Requests = Any  # DayLog-like: users, history, candidates, candidate_topics, select(index)


@dataclass
class SlateBatch:
    """Training slates aligned with their requests.

    Attributes:
        requests: the B requests (DayLog-like).
        slates: (B, G, K) long positions into each request's candidates.
        rewards: (B, G) float reward of each slate.
    """

    requests: Requests
    slates: torch.Tensor
    rewards: torch.Tensor

    def __len__(self) -> int:
        return self.slates.shape[0]

    def select(self, index: torch.Tensor) -> SlateBatch:
        return SlateBatch(self.requests.select(index), self.slates[index], self.rewards[index])


def score(model, requests: Requests, device: torch.device) -> torch.Tensor:
    """Scores (B, C) on ``device`` of a :class:`TrainableScorer` or a plain (frozen) ``Scorer``."""
    if hasattr(model, "score_requests"):
        return model.score_requests(requests).to(device)
    dev = next(model.parameters()).device
    out = model(requests.users.to(dev), requests.history.to(dev), requests.candidates.to(dev),
                requests.candidate_topics.to(dev))
    return out.to(device)


def slate_items(candidates: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
    """Item ids (B, G, K) of slates (B, G, K) given as positions into candidates (B, C)."""
    b, g, k = slates.shape
    return candidates.gather(1, slates.reshape(b, g * k)).view(b, g, k)


def slate_rewards(world, requests: Requests, slates: torch.Tensor, kind: str,
                  gen: torch.Generator) -> torch.Tensor:
    """Reward (B, G) of each slate (B, G, K) for its request: sampled clicks or expected clicks.

    The simulator answers each slate as if it had been served, without changing its state.
    """
    b, g, k = slates.shape
    dev = world.device
    items = slate_items(requests.candidates.to(dev), slates.to(dev)).view(b * g, k)  # (B*G, K)
    users = requests.users.to(dev).repeat_interleave(g)  # (B*G,)
    if kind == "expected":
        return ground_truth.expected_clicks(world, users, items).view(b, g)
    if kind == "clicks":
        return respond(world, users, items, gen).to(torch.float32).sum(dim=1).view(b, g)
    raise ValueError(f"reward = {kind!r}: use 'clicks' or 'expected'")


def logged_data(log: Requests, kind: str) -> SlateBatch:
    """The served slates (G = 1) and their reward: observed clicks, or the logged true
    probabilities' sum for ``expected``."""
    value = log.clicks if kind == "clicks" else log.true_probs  # (B, K)
    reward = value.to(torch.float32).sum(dim=1, keepdim=True)  # (B, 1)
    return SlateBatch(log, log.slates.unsqueeze(1), reward)


def teacher_data(world, requests: Requests, kind: str, gen: torch.Generator) -> SlateBatch:
    """The oracle slate of each request under the world's current state (G = 1)."""
    dev = world.device
    slates = ground_truth.oracle_slate(world, requests.users.to(dev), requests.candidates.to(dev))
    slates = slates.unsqueeze(1)  # (B, 1, K)
    return SlateBatch(requests, slates, slate_rewards(world, requests, slates, kind, gen))


def sampled_data(world, requests: Requests, scores: torch.Tensor, group_size: int,
                 temperature: float, kind: str, gen: torch.Generator) -> SlateBatch:
    """G Plackett-Luce slates per request sampled from ``scores`` (B, C), with rewards."""
    slates = sample_groups(scores.detach(), world.cfg.slate_size, group_size, gen, temperature)
    return SlateBatch(requests, slates, slate_rewards(world, requests, slates, kind, gen))


def minibatches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A random order of ``range(n)`` cut into index tensors of ``batch_size`` (last shorter)."""
    return list(torch.randperm(n, generator=gen, device=gen.device).split(batch_size))


def rounds_of(n: int, rounds: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A random order of ``range(n)`` cut into ``rounds`` chunks of whole batches (fewer chunks
    when there are fewer batches than rounds)."""
    order = torch.randperm(n, generator=gen, device=gen.device)
    n_batches = max(1, -(-n // batch_size))
    r = min(rounds, n_batches)
    bounds = [(i * n_batches // r) * batch_size for i in range(r + 1)]
    return [order[lo:min(hi, n)] for lo, hi in itertools.pairwise(bounds) if lo < n]
