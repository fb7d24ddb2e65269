"""The world's state (users, items, day) and how a world is generated from its config.

Generative story (all draws from one explicit generator, in a fixed order):

- Topics: T topic centres (unit vectors in D dims for `latent` items, the identity for `topics`)
  and a mean quality per topic.
- Items: a topic drawn uniformly; embedding = topic centre + noise (`latent`) or the one-hot topic
  (`topics`); quality = topic mean + noise; birth day; a click counter (popularity).
- Cohorts: each anchors its M interest modes on M distinct topics (mode_strength along the topic
  centre plus cohort noise), so a cohort is a "mode" of the population; each also has an activity
  multiplier.
- Users: an even random split into cohorts; modes = cohort centres + user noise; mode weights
  softmax of a normal draw; activity = the cohort's rate times a log-normal user factor.

Item attributes are drawn independently per id, so any fixed set of distinct ids has independent
attributes; the retrieval in :mod:`simulators.candidates` relies on this.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from simulators.config import WorldConfig, resolve_device
from simulators.rng import check_generator


@dataclass
class Users:
    """Per-user state; row u is user id u."""

    interests: torch.Tensor  # (U, M, D) interest mode vectors
    mode_weights: torch.Tensor  # (U, M) mode weights, rows sum to 1
    cohort: torch.Tensor  # (U,) long cohort id
    activity: torch.Tensor  # (U,) daily request probability
    active: torch.Tensor  # (U,) bool: False once the user has left (retention)
    history: torch.Tensor  # (U, H) long clicked item ids, most recent first, -1 padded
    satisfaction: torch.Tensor  # (U,) moving average of per-request satisfaction
    fatigue: torch.Tensor | None  # (U, T) decayed exposure count per topic; None when off

    SERVED_FIELDS: ClassVar[tuple[str, ...]] = ("interests", "history", "satisfaction", "fatigue")
    """The fields serving a user's request may change (:func:`simulators.day.apply_feedback`);
    the others change only at the end of a day (``active``) or never."""


@dataclass
class Items:
    """Per-item attributes; row i is item id i. New items are appended (ids keep growing)."""

    emb: torch.Tensor  # (I, D) embedding (one-hot topic for `topics` worlds)
    topic: torch.Tensor  # (I,) long topic id
    quality: torch.Tensor  # (I,) quality
    birth_day: torch.Tensor  # (I,) long day the item arrived
    popularity: torch.Tensor  # (I,) decayed click counter


@dataclass
class World:
    """Everything the simulator knows. Mutated in place by :func:`simulators.day.simulate_day`."""

    cfg: WorldConfig
    users: Users
    items: Items
    topic_centres: torch.Tensor  # (T, D)
    topic_quality: torch.Tensor  # (T,) mean quality per topic
    cohort_centres: torch.Tensor  # (G, M, D) the cohorts' interest mode centres
    day: int = 0
    day_buffers: object | None = dataclasses.field(default=None, repr=False)
    """Reusable memory for the day logs (a simulators.buffers.BufferPool); never cloned."""

    @property
    def device(self) -> torch.device:
        return self.items.emb.device

    @property
    def n_users(self) -> int:
        return self.users.cohort.shape[0]

    @property
    def n_items(self) -> int:
        return self.items.topic.shape[0]

    @property
    def n_topics(self) -> int:
        return self.topic_centres.shape[0]

    @property
    def n_cohorts(self) -> int:
        return self.cohort_centres.shape[0]

    def clone(self) -> World:
        """A deep copy of the state (for paired control runs and probes that must not touch it);
        the config, immutable, is shared."""

        def copy(obj):
            return type(obj)(**{
                f.name: (v.clone() if isinstance(v, torch.Tensor) else v)
                for f in dataclasses.fields(obj)
                for v in [getattr(obj, f.name)]
            })

        return World(
            cfg=self.cfg, users=copy(self.users), items=copy(self.items),
            topic_centres=self.topic_centres.clone(), topic_quality=self.topic_quality.clone(),
            cohort_centres=self.cohort_centres.clone(), day=self.day,
        )


def _topic_quality(cfg: WorldConfig, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Mean quality per topic, (T,)."""
    T, s = cfg.items.n_topics, cfg.items.topic_quality_spread
    if cfg.items.topic_quality == "ladder":  # RecSim's UtilityModelVideoSampler cluster means
        n_low = int(T * 0.7)
        low = torch.linspace(-s, 0.0, n_low, device=device)
        high = torch.linspace(0.0, s, T - n_low, device=device)
        return torch.cat([low, high])
    return s * torch.randn(T, generator=gen, device=device)


def sample_items(
    cfg: WorldConfig, n: int, birth_day: int, topic_centres: torch.Tensor,
    topic_quality: torch.Tensor, gen: torch.Generator,
) -> Items:
    """``n`` new items born on ``birth_day``, independent draws per item."""
    device = topic_centres.device
    T = topic_centres.shape[0]
    topic = torch.randint(0, T, (n,), generator=gen, device=device)  # (n,)
    if cfg.items.representation == "topics":
        emb = torch.nn.functional.one_hot(topic, T).float()  # (n, T)
    else:
        noise = torch.randn(n, topic_centres.shape[1], generator=gen, device=device)
        emb = topic_centres[topic] + cfg.items.item_spread * noise  # (n, D)
    quality = topic_quality[topic] + cfg.items.quality_std * torch.randn(
        n, generator=gen, device=device)
    return Items(
        emb=emb, topic=topic, quality=quality,
        birth_day=torch.full((n,), int(birth_day), dtype=torch.long, device=device),
        popularity=torch.zeros(n, device=device),
    )


def append_items(world: World, n: int, gen: torch.Generator) -> None:
    """Add ``n`` items born on ``world.day`` to the catalogue (in place)."""
    if n <= 0:
        return
    new = sample_items(world.cfg, n, world.day, world.topic_centres, world.topic_quality, gen)
    for f in dataclasses.fields(Items):
        setattr(world.items, f.name, torch.cat([getattr(world.items, f.name), getattr(new, f.name)]))


def _lognormal(n: int, spread: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Mean-one log-normal factors, (n,)."""
    z = torch.randn(n, generator=gen, device=device)
    return torch.exp(spread * z - 0.5 * spread**2)


def make_world(cfg: WorldConfig, gen: torch.Generator) -> World:
    """Generate a world at day 0 from ``cfg``; ``gen`` must live on the config's device."""
    device = resolve_device(cfg.device)
    check_generator(gen, device)
    uc, ic = cfg.users, cfg.items
    U, G, M, T, D = uc.n_users, uc.n_cohorts, uc.n_modes, ic.n_topics, cfg.emb_dim

    # Topics: centres and mean quality.
    if ic.representation == "topics":
        topic_centres = torch.eye(T, device=device)  # (T, T)
    else:
        topic_centres = torch.nn.functional.normalize(
            torch.randn(T, D, generator=gen, device=device), dim=1)  # (T, D)
    topic_quality = _topic_quality(cfg, gen, device)  # (T,)

    items = sample_items(cfg, ic.n_items, 0, topic_centres, topic_quality, gen)

    # Cohorts: M anchor topics each (distinct when M <= T), centres around them.
    if M <= T:
        anchors = torch.stack([
            torch.randperm(T, generator=gen, device=device)[:M] for _ in range(G)])  # (G, M)
    else:
        anchors = torch.randint(0, T, (G, M), generator=gen, device=device)
    cohort_centres = uc.mode_strength * topic_centres[anchors] + uc.cohort_spread * torch.randn(
        G, M, D, generator=gen, device=device)  # (G, M, D)
    cohort_activity = _lognormal(G, uc.cohort_activity_spread, gen, device)  # (G,)

    # Users.
    cohort = torch.randperm(U, generator=gen, device=device) % G  # (U,) balanced
    if uc.user_noise == "uniform":
        offsets = (2 * torch.rand(U, M, D, generator=gen, device=device) - 1) * uc.user_spread
    else:
        offsets = uc.user_spread * torch.randn(U, M, D, generator=gen, device=device)
    interests = cohort_centres[cohort] + offsets  # (U, M, D)
    if uc.clip_interests:
        interests.clamp_(-1.0, 1.0)
    mode_weights = torch.softmax(
        uc.mode_weight_spread * torch.randn(U, M, generator=gen, device=device), dim=1)  # (U, M)
    activity = (uc.activity_mean * cohort_activity[cohort]
                * _lognormal(U, uc.activity_spread, gen, device)).clamp_(max=1.0)  # (U,)
    users = Users(
        interests=interests, mode_weights=mode_weights, cohort=cohort, activity=activity,
        active=torch.ones(U, dtype=torch.bool, device=device),
        history=torch.full((U, cfg.history_len), -1, dtype=torch.long, device=device),
        satisfaction=torch.ones(U, device=device),
        fatigue=torch.zeros(U, T, device=device) if cfg.dynamics.fatigue.enabled else None,
    )
    return World(cfg=cfg, users=users, items=items, topic_centres=topic_centres,
                 topic_quality=topic_quality, cohort_centres=cohort_centres)
