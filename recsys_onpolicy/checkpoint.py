"""Save and restore the full training state of a :class:`TrainableScorer`, bit-exactly on CPU.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it loads
with ``torch.load(..., weights_only=True)`` (no pickled code runs on load):

    {"format": 1,
     "model_config": ModelConfig as a dict (informational),
     "state": TrainableScorer.state_dict()   # tables, head, fused optimizer state, Adam state
     "extra": the caller's dict              # e.g. day, RNG states, metrics so far}

RNG states go in ``extra`` as tensors: :func:`generator_states` / :func:`restore_generators`.
Writes are atomic: a temporary file in the same folder, then ``os.replace``, so a run killed
mid-write leaves the previous checkpoint intact. With world size > 1 the state holds whole
tables gathered from the shards: call on every rank (the gather is collective) and keep the
file written by rank 0.
"""
from __future__ import annotations

from pathlib import Path

import torch

from recsys_onpolicy.model import TrainableScorer
from simulators.atomic import atomic_write

FORMAT = 1
PLAIN = (torch.Tensor, int, float, bool, str, type(None))


def save_checkpoint(path: str | Path, scorer: TrainableScorer, extra: dict) -> None:
    """Write the scorer's training state and ``extra`` to ``path`` atomically."""
    check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "model_config": scorer.cfg.model_dump(),
        "state": scorer.state_dict(),
        "extra": extra,
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, scorer: TrainableScorer) -> dict:
    """Restore ``scorer`` from ``path`` (``weights_only=True``); return the saved ``extra``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a recsys_onpolicy checkpoint of format {FORMAT}")
    scorer.load_state_dict(payload["state"])
    return payload["extra"]


def check_plain(obj, where: str) -> None:
    """Raise TypeError unless ``obj`` is tensors / numbers / strings in dicts, lists, tuples."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be a str or int")
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise TypeError(
            f"{where} is a {type(obj).__name__}; checkpoints hold only tensors, numbers, strings "
            "and dicts/lists of them (store a torch.Generator as gen.get_state())"
        )


def generator_states(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """``{name: gen.get_state()}``, for ``extra``."""
    return {name: g.get_state() for name, g in gens.items()}


def restore_generators(gens: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    """Set each generator in ``gens`` to its saved state; a missing name is an error."""
    missing = set(gens) - set(states)
    if missing:
        raise KeyError(f"no saved RNG state for {sorted(missing)}; saved: {sorted(states)}")
    for name, g in gens.items():
        g.set_state(states[name])
