"""Feedback-loop metrics of one served day, from its DayLog and the world.

Definitions (``../shared/ARCHITECTURE.md``, "Probes"); the pure formulas live in
:mod:`recsys_onpolicy.metrics`, this file gathers their inputs:

- ``feedback/exposure_gini``, ``feedback/exposure_entropy`` (nats, not normalised),
  ``feedback/coverage``: of the day's impression counts over the catalogue *of that day*, the
  items born on or before the log's day (items arriving at the end of the day are not counted,
  they could not be shown);
- ``feedback/intra_list_diversity``: mean pairwise cosine distance of the item embeddings within
  each served slate (one-hot topics in ``topics`` worlds: the share of pairs on different topics);
- ``feedback/interest_homogenisation``: mean pairwise cosine of the active users' interest
  vectors, each user's vector being the mode-weighted mean of their interest modes;
- ``feedback/regret``: mean over the day's requests of the expected clicks (ground truth) of the
  oracle slate over the request's candidates minus those of the served slate.

Which world state: the daily loop calls this after ``simulate_day``, so interests and the
catalogue are the state the day left behind (what the feedback loop produced). Regret's ground
truth is by default that same end-of-day state for both slates (a consistent comparison; the
served users' own reinforcement/fatigue and the night's drift have been applied). Pass
``truth=`` a clone of the world taken before the day to get the regret at serving time exactly.
"""
from __future__ import annotations

import torch

from recsys_onpolicy import metrics
from simulators import choice
from simulators.day import DayLog
from simulators.ground_truth import attraction_logits, expected_clicks, oracle_slate
from simulators.world import World


def mean_interest(world: World, users: torch.Tensor | None = None) -> torch.Tensor:
    """Mode-weighted mean interest vector per user, (U, D) (or (B, D) for ``users`` (B,))."""
    z, w = world.users.interests, world.users.mode_weights  # (U, M, D), (U, M)
    if users is not None:
        z, w = z[users], w[users]
    return (w.unsqueeze(2) * z).sum(dim=1)


def catalogue_size(world: World, day: int) -> int:
    """Items born on or before ``day`` (ids grow with birth day, so these are ids 0..n-1)."""
    return int((world.items.birth_day <= day).sum())


@torch.no_grad()
def served_and_oracle_clicks(world: World, users: torch.Tensor, candidates: torch.Tensor,
                             items: torch.Tensor, slates: torch.Tensor | None = None,
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected clicks (B,), (B,) under ``world`` of the served slates ``items`` (B, K) and of
    the oracle slates over the same ``candidates`` (B, C), for ``users`` (B,).

    With ``slates`` (B, K), the served items' positions in ``candidates``, both slates read the
    attraction logits of one pass over the candidates (the oracle needs them all anyway)
    instead of recomputing them for each slate's items."""
    if slates is None or not torch.equal(candidates.gather(1, slates), items):
        best = candidates.gather(1, oracle_slate(world, users, candidates))  # (B, K) item ids
        return expected_clicks(world, users, items), expected_clicks(world, users, best)
    logits = attraction_logits(world, users, candidates)  # (B, C)
    best = logits.topk(world.cfg.slate_size, dim=1, sorted=True).indices  # as oracle_slate
    clicks = [choice.click_probs(world.cfg.choice, logits.gather(1, pos)).sum(dim=1)
              for pos in (slates, best)]  # (B,) each, as ground_truth.expected_clicks
    return clicks[0], clicks[1]


@torch.no_grad()
def feedback_metrics(log: DayLog, world: World, truth: World | None = None,
                     batch_size: int = 8192) -> dict[str, float]:
    """The ``feedback/*`` values of the day in ``log`` (empty dict for a day without requests).

    Args:
        log: the day's served requests (one day).
        world: the world after that day (catalogue, item embeddings, interests).
        truth: the world whose ground truth scores the slates for regret (default ``world``).
        batch_size: requests per chunk for diversity and regret (bounds memory).
    """
    if len(log) == 0:
        return {}
    day = int(log.day[0])
    if bool((log.day != day).any()):
        raise ValueError(f"log holds days {log.day.unique().tolist()}: pass one day's DayLog")
    truth = world if truth is None else truth
    n_items = catalogue_size(world, day)
    counts = metrics.exposure_counts(log.items, n_items)  # (I_day,)
    dev, rows, k = truth.device, len(log), log.items.shape[1]
    ild, served, oracle = 0.0, [], []
    for i in range(0, rows, batch_size):
        part = slice(i, i + batch_size)
        users, cand, items, slates = (t[part].to(dev) for t in (
            log.users, log.candidates, log.items, log.slates))
        if k >= 2:  # mean over slates: chunks weigh by their share of rows
            emb = world.items.emb[items.to(world.device)]  # (b, K, D)
            ild += users.shape[0] / rows * metrics.intra_list_diversity(emb)
        s, o = served_and_oracle_clicks(truth, users, cand, items, slates)
        served.append(s)
        oracle.append(o)
    active = torch.nonzero(world.users.active).squeeze(1)
    return {
        "feedback/exposure_gini": metrics.exposure_gini(counts),
        "feedback/coverage": metrics.coverage(log.items, n_items),
        "feedback/exposure_entropy": metrics.exposure_entropy(counts),
        "feedback/intra_list_diversity": ild if k >= 2 else float("nan"),
        "feedback/interest_homogenisation": (
            metrics.interest_homogenisation(mean_interest(world, active))
            if active.numel() >= 2 else float("nan")),
        "feedback/regret": metrics.regret(torch.cat(served), torch.cat(oracle)),
    }
