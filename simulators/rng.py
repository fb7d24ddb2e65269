"""Explicit random generators: every random draw in the simulator takes one of these.

One seed gives bit-identical results on CPU. A simulated day splits its generator into
independent child streams (requests, retrieval, responses, dynamics), so two policies served on
the same world state see the same users and the same candidate draws (common random numbers).
"""
from __future__ import annotations

import torch


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def child_generator(gen: torch.Generator) -> torch.Generator:
    """A new generator on ``gen``'s device, seeded from one draw of ``gen``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    return make_generator(seed, gen.device)


def check_generator(gen: torch.Generator, device: torch.device, what: str = "gen") -> None:
    """Raise a clear error unless ``gen`` is a generator on ``device``'s type."""
    if not isinstance(gen, torch.Generator):
        raise TypeError(
            f"{what} must be a torch.Generator (e.g. simulators.rng.make_generator(seed, "
            f"'{device}')), got {type(gen).__name__}"
        )
    if gen.device.type != device.type:
        raise ValueError(
            f"{what} is on {gen.device} but the world is on {device}: create it with "
            f"simulators.rng.make_generator(seed, '{device}')"
        )
