"""Cohort-holdout AUC and its oracle ceiling, per cohort.

Definition (``../shared/ARCHITECTURE.md``, "Probes"): for a cohort, impressions drawn from a
fixed uniform-random probe policy over that cohort's candidates (the :class:`ProbeSet`), labels
sampled by the simulator (or the true probabilities for the noise-free variant); the AUC of the
model's item score (sklearn ``roc_auc_score``), reported with the oracle AUC of the true
probabilities on the same impressions as the ceiling.

- Impressions: the P x K (user, item, position) cells of the probe slates.
- Labels: ``simulators.day.respond`` on today's world with a generator re-seeded from the probe
  set's ``label_seed`` on every call, so the uniforms behind the clicks are the same every day
  (common random numbers). Under independent clicks (``pbm``) a label changes only where its
  true probability moved across its fixed uniform; under one-click models (``cascade``,
  ``mnl``, ``proportional``) one uniform per slate picks a position against cumulative probabilities, so a label
  can also change when other positions' probabilities move. Either way labels depend on the
  world, not on the model scored. Noise-free: each impression is a positive with weight p and a negative with
  weight 1 - p (:func:`soft_label_auc`), the expectation of the sampled-label confusion counts.
- Model score: the click logit of the shown item (position-free); the oracle's score is the true
  marginal click probability of that (user, item, position), so under a position-dependent choice
  model the ceiling also knows the position effect the model's item score cannot see.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recsys_onpolicy.metrics import auc
from recsys_onpolicy.probes.probe_set import ProbeSet
from simulators.day import respond
from simulators.ground_truth import click_probs
from simulators.rng import make_generator
from simulators.world import World


def soft_label_auc(scores, probs) -> float:
    """AUC of ``scores`` against soft labels ``probs`` in [0, 1], both (N,) (sklearn).

    Each item is duplicated: once as a positive with sample weight p, once as a negative with
    weight 1 - p. Equals :func:`recsys_onpolicy.metrics.auc` when the probs are 0/1; NaN when
    the total positive or negative weight is zero.
    """
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1).numpy()
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64).reshape(-1).numpy()
    if s.shape != p.shape:
        raise ValueError(f"scores {s.shape} and probs {p.shape} must have the same length")
    if ((p < 0) | (p > 1)).any() or np.isnan(p).any():
        raise ValueError("probs must be probabilities in [0, 1]")
    if p.sum() == 0 or (1 - p).sum() == 0:
        return float("nan")
    y = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    w = np.concatenate([p, 1 - p])
    keep = w > 0  # zero-weight rows change nothing; dropping them keeps sklearn's checks quiet
    return float(roc_auc_score(y[keep], np.concatenate([s, s])[keep], sample_weight=w[keep]))


@torch.no_grad()
def probe_labels(world: World, probe: ProbeSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(true_probs, clicks), both (P, K) float, of the probe slates under today's world; the
    clicks reuse the probe set's fixed label noise."""
    users, items = probe.users, probe.items  # (P,), (P, K)
    probs = click_probs(world, users, items)  # (P, K)
    clicks = respond(world, users, items, make_generator(probe.label_seed, world.device))
    return probs, clicks.to(probs.dtype)


@torch.no_grad()
def cohort_holdout_auc(
    world: World, probe: ProbeSet, scores: torch.Tensor, noise_free: bool = False,
) -> dict[int, tuple[float, float]]:
    """``{cohort: (auc, oracle_auc)}`` for every cohort in the probe set.

    Args:
        world: today's world (ground truth and label sampling; not changed).
        probe: the fixed probe set.
        scores: (P, C) the model's scores of the probe requests' candidates
            (:func:`~recsys_onpolicy.probes.probe_set.score_probes`).
        noise_free: soft labels = true probabilities instead of sampled clicks.
    Returns:
        per cohort the AUC of the model's item score and of the true probabilities on the same
        impressions; NaN where the cohort's labels hold one class only.
    """
    if scores.shape != probe.candidates.shape:
        raise ValueError(f"scores must be (P, C) = {tuple(probe.candidates.shape)}, "
                         f"got {tuple(scores.shape)}")
    probs, clicks = probe_labels(world, probe)  # (P, K) each
    item_scores = scores.to(probs.device).gather(1, probe.slates)  # (P, K)
    out = {}
    for k in probe.cohort.unique().tolist():
        rows = probe.cohort == k
        s, p, y = item_scores[rows], probs[rows], clicks[rows]
        if noise_free:
            out[k] = (soft_label_auc(s, p), soft_label_auc(p, p))
        else:
            out[k] = (auc(s, y), auc(p, y))
    return out
