"""The world's configuration: every knob of the simulated users, items, choice model and dynamics.

A :class:`WorldConfig` is a tree of typed, validated models (see :mod:`simulators.typed_config`).
Ranges are checked field by field; cross-field rules (slate no larger than the candidate set,
retrieval shares summing to one, ...) are checked in ``model_validator`` hooks whose messages name
the field and the fix. Named presets live in :mod:`simulators.presets`.

Notation used in docstrings and shape comments: U users, I items, T topics, M interest modes,
D embedding dimension, C candidates per request, K slate size, H history length.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from simulators.typed_config import ConfigError, StrictModel


class UserConfig(StrictModel):
    """The user population: cohorts, multi-modal interests, activity."""

    n_users: int = Field(10_000, gt=0)
    """Number of users U in the world."""
    n_cohorts: int = Field(4, gt=0)
    """Number of cohorts; users are split evenly among them at random."""
    n_modes: int = Field(2, gt=0)
    """Interest modes M per user; each cohort has its own M mode centres."""
    mode_strength: float = Field(1.0, ge=0.0)
    """Length of a cohort's mode centre along the centre of the topic it is anchored on."""
    cohort_spread: float = Field(0.1, ge=0.0)
    """Std (per coordinate) of a cohort mode centre around its anchor topic's centre."""
    user_spread: float = Field(0.1, ge=0.0)
    """Spread (per coordinate) of a user's modes around the cohort's mode centres."""
    user_noise: Literal["normal", "uniform"] = "normal"
    """Distribution of a user's offsets: normal(0, user_spread) or uniform(-user_spread, user_spread)."""
    clip_interests: bool = False
    """Clip interests to [-1, 1] after sampling and after every update (RecSim's convention)."""
    mode_weight_spread: float = Field(0.5, ge=0.0)
    """Mode weights are softmax(N(0, mode_weight_spread)) per user; 0 gives equal weights."""
    activity_mean: float = Field(0.5, gt=0.0, le=1.0)
    """Mean daily probability that a user makes a request (each user makes at most one a day),
    before the per-user rates are clipped at 1: with a high mean and wide spreads the realised
    mean is somewhat lower."""
    activity_spread: float = Field(0.3, ge=0.0)
    """Log-normal spread of activity across users (rates are clipped to 1)."""
    cohort_activity_spread: float = Field(0.2, ge=0.0)
    """Log-normal spread of the activity multiplier shared by a cohort."""


class ItemConfig(StrictModel):
    """The catalogue: representation, topics, quality and daily arrivals."""

    n_items: int = Field(5_000, gt=0)
    """Items in the catalogue at day 0."""
    representation: Literal["latent", "topics"] = "latent"
    """`latent`: dense embeddings clustered around topic centres; `topics`: one-hot topic vectors
    (RecSim's documents), so D = n_topics."""
    n_topics: int = Field(20, gt=0)
    """Number of topics T; every item has one topic."""
    dim: int = Field(16, gt=0)
    """Embedding dimension D of latent items and user modes (ignored for `topics`: D = n_topics)."""
    item_spread: float = Field(0.1, ge=0.0)
    """Std (per coordinate) of a latent item's embedding around its topic's centre."""
    topic_quality: Literal["normal", "ladder"] = "normal"
    """Mean quality per topic: `normal` draws N(0, topic_quality_spread); `ladder` spaces it
    linearly, 70% of topics from -spread to 0 and 30% from 0 to +spread (RecSim's utility model)."""
    topic_quality_spread: float = Field(0.5, ge=0.0)
    """Std (`normal`) or range (`ladder`) of the per-topic mean quality."""
    quality_std: float = Field(0.3, ge=0.0)
    """Std of an item's quality around its topic's mean."""
    items_per_day: int = Field(50, ge=0)
    """New items that arrive at the end of each simulated day (ids continue the catalogue)."""
    popularity_decay: float = Field(0.9, ge=0.0, le=1.0)
    """Share of an item's click counter kept from one day to the next."""


class ChoiceConfig(StrictModel):
    """How a user responds to a slate. Attraction logit of item i for user u:
    ``affinity_scale * affinity(u, i) + quality_weight * quality_i + click_bias - fatigue``,
    where ``affinity = (1/mode_sharpness) * log sum_m w_m exp(mode_sharpness * <z_m, e_i>)``."""

    model: Literal["pbm", "cascade", "mnl", "proportional"] = "pbm"
    """`pbm`: position-based (click = examined AND attracted, independently per position);
    `cascade`: scan top-down, click the first attractive item, stop; `mnl`: multinomial logit over
    the slate plus a no-click option (at most one click); `proportional`: choice in proportion to
    the logit minus `min_normalizer`, plus a no-click option (at most one click; RecSim's
    interest-evolution environment). See :mod:`simulators.choice`."""
    affinity_scale: float = Field(4.0, ge=0.0)
    """Weight of the user-item affinity in the attraction logit."""
    quality_weight: float = Field(0.5)
    """Weight of item quality in the attraction logit."""
    click_bias: float = Field(-3.0)
    """Constant added to every attraction logit; sets the base click rate."""
    mode_sharpness: float = Field(4.0, gt=0.0)
    """Temperature inverse of the soft maximum over interest modes (large = hard max)."""
    position_decay: float = Field(1.0, ge=0.0)
    """Examination at 0-based position k is (k+1)^-position_decay (`pbm`); for `mnl` its log is
    added to the logit, for `proportional` it multiplies the score; unused by `cascade`. 0 means
    no position effect."""
    no_click_logit: float = Field(1.0)
    """Score of the no-click option: a logit for `mnl`, a raw score (before `min_normalizer` is
    subtracted) for `proportional`; RecSim's `no_click_mass` in both. Unused otherwise."""
    min_normalizer: float = Field(-1.0)
    """`proportional` only: subtracted from every score and from the no-click score (RecSim's
    `min_normalizer`); a logit below it counts as 0."""

    @model_validator(mode="after")
    def _check_no_click(self) -> ChoiceConfig:
        if self.model == "proportional" and not self.no_click_logit > self.min_normalizer:
            raise ValueError(
                f"no_click_logit = {self.no_click_logit} must exceed min_normalizer = "
                f"{self.min_normalizer} for model 'proportional' (the no-click option needs "
                "positive mass; RecSim uses 1 and -1)")
        return self


class DriftConfig(StrictModel):
    """Daily interest drift: an Ornstein-Uhlenbeck step toward the cohort's mode centres."""

    enabled: bool = False
    """Apply interest drift at the end of every day."""
    pull: float = Field(0.05, ge=0.0, le=1.0)
    """Share of the distance to the cohort centre closed per day."""
    noise: float = Field(0.02, ge=0.0)
    """Std (per coordinate) of the daily random step."""


class ReinforcementConfig(StrictModel):
    """Consumption reinforcement: a click moves the user's interests toward the clicked item."""

    enabled: bool = False
    """Update interests after every served batch from the batch's clicks."""
    rule: Literal["toward", "recsim"] = "toward"
    """`toward`: each mode moves toward the clicked item's embedding in proportion to its
    responsibility for the click; `recsim`: RecSim's interest evolution on the clicked topic's
    coordinate (step rate*(1-|x|)*(1-x), sign + with probability (x+1)/2; `topics` items only)."""
    rate: float = Field(0.05, ge=0.0, le=1.0)
    """Step size of the update (RecSim's y-intercept 0.3 for `recsim`)."""


class FatigueConfig(StrictModel):
    """Fatigue: repeated exposure to a topic lowers the user's attraction to it."""

    enabled: bool = False
    """Track per-(user, topic) exposure and subtract it from attraction logits."""
    strength: float = Field(0.2, ge=0.0)
    """Logit penalty per unit of (decayed) exposure count."""
    decay: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the exposure count kept from one day to the next (recovery)."""


class RetentionConfig(StrictModel):
    """Satisfaction-driven retention: unsatisfied users leave, some come back."""

    enabled: bool = False
    """Track satisfaction and apply churn / return at the end of each day."""
    memory: float = Field(0.3, ge=0.0, le=1.0)
    """Weight of a request's satisfaction in the user's moving average."""
    quality_weight: float = Field(0.5, ge=0.0)
    """A request's satisfaction = clicks + quality_weight * (sum of clicked items' quality)."""
    churn_max: float = Field(0.1, ge=0.0, le=1.0)
    """Daily leave probability of a user with satisfaction 0 (after a request)."""
    satisfaction_scale: float = Field(0.5, gt=0.0)
    """Leave probability = churn_max * exp(-max(satisfaction, 0) / satisfaction_scale)."""
    return_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Daily probability that a user who left comes back."""


class DynamicsConfig(StrictModel):
    """The state dynamics; each one is switched on and off independently."""

    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Interest drift (daily)."""
    reinforcement: ReinforcementConfig = Field(default_factory=ReinforcementConfig)
    """Consumption reinforcement (after every batch)."""
    fatigue: FatigueConfig = Field(default_factory=FatigueConfig)
    """Fatigue on repeated topic exposure."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    """Satisfaction-driven churn and return."""


class CandidateConfig(StrictModel):
    """Candidate generation: a fixed, policy-independent retrieval mix of C items per request."""

    n_candidates: int = Field(100, gt=0)
    """Candidates C per request (distinct items)."""
    interest: float = Field(0.5, ge=0.0, le=1.0)
    """Share of candidates retrieved from topics close to the user's interest modes."""
    popular: float = Field(0.2, ge=0.0, le=1.0)
    """Share drawn in proportion to (clicks + 1)^popularity_exponent (yesterday's counters)."""
    fresh: float = Field(0.1, ge=0.0, le=1.0)
    """Share drawn uniformly from items born in the last `fresh_days` days."""
    random: float = Field(0.2, ge=0.0, le=1.0)
    """Share drawn uniformly from the whole catalogue."""
    fresh_days: int = Field(3, gt=0)
    """Window of the `fresh` source, in days."""
    popularity_exponent: float = Field(1.0, ge=0.0)
    """Exponent of the `popular` source's weights."""
    interest_sharpness: float = Field(5.0, ge=0.0)
    """Topic retrieval weights are softmax(interest_sharpness * <mode, topic centre>)."""

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> CandidateConfig:
        total = self.interest + self.popular + self.fresh + self.random
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"candidates.interest + popular + fresh + random = {total:g}: the retrieval shares "
                "must sum to 1 (adjust one of them)"
            )
        return self


class WorldConfig(StrictModel):
    """A complete simulated world."""

    users: UserConfig = Field(default_factory=UserConfig)
    """The user population."""
    items: ItemConfig = Field(default_factory=ItemConfig)
    """The catalogue."""
    choice: ChoiceConfig = Field(default_factory=ChoiceConfig)
    """The click model."""
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    """State dynamics, each switchable."""
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    """Per-request candidate generation."""
    slate_size: int = Field(10, gt=0)
    """Slate size K: items shown per request."""
    history_len: int = Field(20, ge=0)
    """Length H of each user's click history (most recent first, -1 padded)."""
    device: str = "cpu"
    """Where the world's tensors live: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when present)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> WorldConfig:
        c = self.candidates.n_candidates
        if self.slate_size > c:
            raise ValueError(
                f"slate_size = {self.slate_size} > candidates.n_candidates = {c}: a slate is chosen "
                "from the candidates (lower slate_size or raise n_candidates)"
            )
        if self.items.n_items < c:
            raise ValueError(
                f"items.n_items = {self.items.n_items} < candidates.n_candidates = {c}: every "
                "request needs C distinct items (raise n_items or lower n_candidates)"
            )
        if self.dynamics.reinforcement.rule == "recsim" and self.items.representation != "topics":
            raise ValueError(
                "dynamics.reinforcement.rule = 'recsim' needs items.representation = 'topics' "
                "(it updates the clicked topic's coordinate); use rule 'toward' for latent items"
            )
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device = {self.device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'")
        return self

    @property
    def emb_dim(self) -> int:
        """Dimension D of item embeddings and user modes."""
        return self.items.n_topics if self.items.representation == "topics" else self.items.dim

    def catalogue_size(self, days: int) -> int:
        """Number of items after ``days`` simulated days (for sizing a model's item table)."""
        return self.items.n_items + self.items.items_per_day * int(days)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (CUDA must exist)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = {device!r} but CUDA is not available here: use 'cpu' or 'auto'")
    return dev


def require_device(key: str, device: str, source: str = "",
                   fix: str = "'auto' (CUDA when present) or 'cpu'") -> None:
    """ConfigError naming ``key`` when ``device`` asks for CUDA (``cuda``, ``cuda:N``, ``gpu``)
    on a machine without it: checked before a run starts, not when its model is built."""
    if device.startswith(("cuda", "gpu")) and not torch.cuda.is_available():
        raise ConfigError(f"{source}{key} = {device!r} but this machine has no CUDA device: "
                          f"use {fix}")
