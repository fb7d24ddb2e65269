"""The base policy pi_0 that every regime starts from, and the world it leaves behind.

Before experiment day 0 the world is simulated for ``warmup.days`` days under a uniform-random
logging policy (every ordered slate of the candidates equally likely, every cohort served), and
after each such day the model takes BCE updates on that day's impressions (the
``supervised_daily`` update). The result, pi_0, has seen every cohort without any selection bias
of its own; it is the "pre-trained model" of the research, and its frozen copy is the KL
reference.

Every regime of a run with the same seed starts from the same pi_0 and the same post-warm-up
world (same users, histories, items and world generator state), so regimes differ only in how
they train. :func:`base_policy` caches the result in memory (a few entries) and, with a
``cache_dir``, on disk, keyed by everything it depends on (:func:`base_key`).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from recsys_onpolicy.model import ModelConfig, TrainableScorer, upgrade_state
from recsys_onpolicy.regimes.config import RegimeConfig
from recsys_onpolicy.regimes.context import TrainContext
from recsys_onpolicy.regimes.supervised import train_supervised
from recsys_onpolicy.run_state import (
    load_state,
    save_atomic,
    stream_generator,
    stream_seed,
    to_cpu,
    world_state,
)
from simulators.config import resolve_device
from simulators.day import simulate_day
from simulators.policies import uniform_random_policy
from simulators.world import make_world

if TYPE_CHECKING:
    from recsys_onpolicy.run_config import RecsysRunConfig

MEMORY_CACHE_SIZE = 4
_MEMORY: OrderedDict[str, BasePolicy] = OrderedDict()


@dataclass
class BasePolicy:
    """pi_0 and the world after the warm-up, as plain state (CPU tensors).

    Attributes:
        key: the cache key (:func:`base_key`).
        model: ``TrainableScorer.state_dict()`` of pi_0 (weights and optimizer states).
        world: :func:`recsys_onpolicy.run_state.world_state` after the warm-up.
        world_gen: state of the world's generator after the warm-up.
    """

    key: str
    model: dict
    world: dict
    world_gen: torch.Tensor

    def to_dict(self) -> dict:
        return {"key": self.key, "model": self.model, "world": self.world,
                "world_gen": self.world_gen}

    @staticmethod
    def from_dict(saved: dict) -> BasePolicy:
        """What :meth:`to_dict` wrote (also a file saved before the tables were split into two
        collections: :func:`~recsys_onpolicy.model.upgrade_state`)."""
        return BasePolicy(**{**saved, "model": upgrade_state(saved["model"])})


def base_key(cfg: RecsysRunConfig) -> str:
    """Hash of everything pi_0 depends on: world, model, warm-up, days (table sizes), batch
    sizes, seed and the device type."""
    payload = {
        "world": cfg.world.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
        "warmup": cfg.warmup.model_dump(mode="json"), "days": cfg.days, "seed": cfg.seed,
        "serve_batch_size": cfg.serve_batch_size, "train_batch_size": cfg.train_batch_size,
        "device": resolve_device(cfg.world.device).type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def table_ids(cfg: RecsysRunConfig) -> tuple[int, int, int]:
    """(users, items, topics) id counts of the model, from the config alone (the world made
    from it has these): the item table covers every item that will exist by the end of the run
    (warm-up days + experiment days of arrivals)."""
    w = cfg.world
    return w.users.n_users, w.catalogue_size(cfg.warmup.days + cfg.days), w.items.n_topics


def new_scorer(model_cfg: ModelConfig, cfg: RecsysRunConfig) -> TrainableScorer:
    """A freshly initialised :class:`TrainableScorer` (initial weights from the run's seed)."""
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "model_init"))
    return TrainableScorer(model_cfg, *table_ids(cfg), gen)


def warm_up(cfg: RecsysRunConfig) -> BasePolicy:
    """Make pi_0: ``warmup.days`` days of uniform-random logging, each followed by BCE updates."""
    device = resolve_device(cfg.world.device)
    world_gen = stream_generator(cfg.seed, "world", device)
    world = make_world(cfg.world, world_gen)
    policy = new_scorer(cfg.model, cfg)
    logging_policy = uniform_random_policy(cfg.world.slate_size,
                                           stream_generator(cfg.seed, "warmup_log", device))
    regime = RegimeConfig(preset="supervised_daily", data="logged", loss="bce",
                          epochs=cfg.warmup.epochs)
    ctx = TrainContext(regime=regime, policy=policy, reference=None, world=world,
                       gen=stream_generator(cfg.seed, "warmup_train", device),
                       temperature=cfg.serving_temperature, batch_size=cfg.train_batch_size)
    for _ in range(cfg.warmup.days):
        log = simulate_day(world, logging_policy, world_gen, cfg.serve_batch_size)
        if len(log):
            train_supervised(ctx, log)
    return BasePolicy(base_key(cfg), to_cpu(policy.state_dict()), world_state(world),
                      world_gen.get_state().clone())


def base_policy(cfg: RecsysRunConfig, cache_dir: str | Path | None = None) -> BasePolicy:
    """pi_0 for ``cfg``: from the memory cache, else ``cache_dir/pi0-<key>.pt``, else
    :func:`warm_up`; stored in both caches (the file is written if it is missing)."""
    key = base_key(cfg)
    path = None if cache_dir is None else Path(cache_dir) / f"pi0-{key}.pt"
    base = _MEMORY.get(key)
    if base is None and path is not None and path.is_file():
        base = BasePolicy.from_dict(load_state(path))
    if base is None:
        base = warm_up(cfg)
    if path is not None and not path.is_file():
        save_atomic(base.to_dict(), path)
    _MEMORY[key] = base
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_CACHE_SIZE:
        _MEMORY.popitem(last=False)
    return base
