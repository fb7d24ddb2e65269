"""Explicit generators: seeded, split into child streams deterministically."""
import torch

from simulators.rng import child_generator, make_generator


def test_child_generators_are_deterministic_and_distinct():
    g1, g2 = make_generator(3), make_generator(3)
    a1, b1 = child_generator(g1), child_generator(g1)
    a2 = child_generator(g2)
    x = torch.rand(5, generator=a1)
    assert torch.equal(x, torch.rand(5, generator=a2))
    assert not torch.equal(x, torch.rand(5, generator=b1))
