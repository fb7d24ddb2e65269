"""Named worlds. Each returns a validated :class:`~simulators.config.WorldConfig`.

- :func:`tiny`: seconds-scale world for tests and smoke runs.
- :func:`default_latent`: the default experiment world: latent item embeddings in topic clusters,
  cohorts with multi-modal interests, a retrieval mix, position-based clicks, gentle drift.
- :func:`recsim_equivalent`: the user model of RecSim's interest-evolution environment
  (``recsim/environments/interest_evolution.py``), for throughput comparisons: 20 one-hot
  topics, quality on RecSim's topic ladder (-3..3, std 0.1), interests uniform in [-1, 1], the
  score of an item is ``interest[topic]``, RecSim's multinomial *proportional* choice with
  ``min_normalizer`` -1 and ``no_click_mass`` 1 (P(k) = (x_k + 1) / (2 + sum_j (x_j + 1))), 100
  uniformly drawn candidates, slate 10, RecSim's interest evolution after a click (step 0.3).
  Every user is active every day, so a simulated day is one RecSim step per user. What differs:
  RecSim ends a user's session when a time budget runs out and samples a fresh user, and item
  quality only stretches or shrinks that budget; here users persist (interest evolution
  compounds across days), retention is off, so quality has no effect, and the reward is clicks
  (RecSim: 4 minutes of watch time per click, cut at the end of the budget). RecSim's agent
  observes the interest vector; here policies see requests (history, cohort).
"""
from __future__ import annotations

from typing import Any

from simulators.config import WorldConfig
from simulators.typed_config import merge, validate


def _build(spec: dict, overrides: dict[str, Any] | None) -> WorldConfig:
    return validate(WorldConfig, merge(spec, overrides or {}))


def tiny(overrides: dict[str, Any] | None = None) -> WorldConfig:
    """~200 users, 300 items, 2 cohorts, C=20, K=5; runs a day in milliseconds."""
    return _build({
        "users": {"n_users": 200, "n_cohorts": 2, "n_modes": 2},
        "items": {"n_items": 300, "n_topics": 8, "dim": 8, "items_per_day": 10},
        "candidates": {"n_candidates": 20},
        "slate_size": 5, "history_len": 5,
    }, overrides)


def default_latent(overrides: dict[str, Any] | None = None) -> WorldConfig:
    """100k users in 8 cohorts with 3 modes, 20k items in 50 topics, D=16, C=100, K=10, PBM."""
    return _build({
        "users": {"n_users": 100_000, "n_cohorts": 8, "n_modes": 3},
        "items": {"n_items": 20_000, "n_topics": 50, "dim": 16, "items_per_day": 200},
        "choice": {"model": "pbm"},
        "dynamics": {"drift": {"enabled": True, "pull": 0.05, "noise": 0.02}},
        "candidates": {"n_candidates": 100},
        "slate_size": 10, "history_len": 20,
    }, overrides)


def recsim_equivalent(overrides: dict[str, Any] | None = None) -> WorldConfig:
    """RecSim interest-evolution semantics at 100k users (see the module docstring)."""
    return _build({
        "users": {"n_users": 100_000, "n_cohorts": 1, "n_modes": 1, "mode_strength": 0.0,
                  "cohort_spread": 0.0, "user_spread": 1.0, "user_noise": "uniform",
                  "clip_interests": True, "mode_weight_spread": 0.0, "activity_mean": 1.0,
                  "activity_spread": 0.0, "cohort_activity_spread": 0.0},
        "items": {"n_items": 100_000, "representation": "topics", "n_topics": 20,
                  "topic_quality": "ladder", "topic_quality_spread": 3.0, "quality_std": 0.1,
                  "items_per_day": 0},
        "choice": {"model": "proportional", "affinity_scale": 1.0, "quality_weight": 0.0,
                   "click_bias": 0.0, "position_decay": 0.0, "no_click_logit": 1.0,
                   "min_normalizer": -1.0},
        "dynamics": {"reinforcement": {"enabled": True, "rule": "recsim", "rate": 0.3}},
        "candidates": {"n_candidates": 100, "interest": 0.0, "popular": 0.0, "fresh": 0.0,
                       "random": 1.0},
        "slate_size": 10, "history_len": 10,
    }, overrides)
