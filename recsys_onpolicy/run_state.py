"""A run's state as plain tensors and containers: seeds, generators, the world, atomic files.

Everything here round-trips through ``torch.save`` / ``torch.load(weights_only=True)``: dicts,
lists, str, int, float, bool, None and tensors only, so a checkpoint can never execute code.

Seeds: every random stream of a run has its own generator, seeded from the run's seed and the
stream's name (:func:`stream_seed`), so adding a stream never shifts another one, and two runs
with the same seed share the world, pi_0 and the requests of every day they serve alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import torch

from simulators.atomic import atomic_write
from simulators.config import WorldConfig
from simulators.rng import make_generator
from simulators.typed_config import ConfigError, first_line
from simulators.world import Items, Users, World


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the stream ``name`` of the run seeded ``seed`` (SHA-256 based)."""
    digest = hashlib.sha256(f"recsys-onpolicy/{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_generator(seed: int, name: str, device: torch.device | str) -> torch.Generator:
    """A fresh generator on ``device`` for the stream ``name``."""
    return make_generator(stream_seed(seed, name), device)


def generator_states(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """``{name: gen.get_state()}`` (CPU byte tensors, also for CUDA generators)."""
    return {name: g.get_state().clone() for name, g in gens.items()}


def restore_generators(gens: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    """Set each generator's state in place; the names must match."""
    if set(gens) != set(states):
        raise ValueError(f"generator states {sorted(states)} do not match {sorted(gens)}")
    for name, g in gens.items():
        g.set_state(states[name])


def world_state(world: World) -> dict:
    """The world's state (users, items, topic and cohort tensors, day) as CPU tensors; the
    config is not included (the run config holds it) and the retrieval cache is derived."""

    def fields(obj) -> dict:
        return {f.name: (None if (v := getattr(obj, f.name)) is None else v.detach().cpu().clone())
                for f in dataclasses.fields(obj)}

    return {
        "day": int(world.day), "users": fields(world.users), "items": fields(world.items),
        "topic_centres": world.topic_centres.cpu().clone(),
        "topic_quality": world.topic_quality.cpu().clone(),
        "cohort_centres": world.cohort_centres.cpu().clone(),
    }


def restore_world(state: dict, cfg: WorldConfig, device: torch.device) -> World:
    """A :class:`World` from :func:`world_state` output, on ``device`` (tensors are copied, so
    ``state`` can be reused, e.g. from a cache)."""

    def own(t: torch.Tensor | None) -> torch.Tensor | None:  # a copy: the world mutates it
        return None if t is None else t.to(device, copy=True)

    def build(cls, values: dict):
        return cls(**{k: own(v) for k, v in values.items()})

    return World(
        cfg=cfg, users=build(Users, state["users"]), items=build(Items, state["items"]),
        topic_centres=own(state["topic_centres"]), topic_quality=own(state["topic_quality"]),
        cohort_centres=own(state["cohort_centres"]), day=int(state["day"]),
    )


def to_cpu(tree):
    """A deep copy of nested dicts / lists of tensors with every tensor cloned to the CPU."""
    if torch.is_tensor(tree):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename: a run killed while
    writing leaves the previous file intact."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_state(path: str | Path) -> dict:
    """Read a file written by :func:`save_atomic` (``weights_only=True``, on the CPU); a file
    that cannot be read (truncated, overwritten by something else) raises ConfigError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError(
            f"{path} cannot be read ({type(err).__name__}: {first_line(err)}); it "
            "was damaged or replaced: delete it to start that part again, or use a new --out"
        ) from None
