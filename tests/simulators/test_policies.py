"""Reference policies: valid slates, exact propensities, the oracle."""
import math

import torch

from simulators import presets
from simulators.day import make_requests
from simulators.ground_truth import oracle_slate
from simulators.policies import (
    fixed_positions_policy,
    oracle_policy,
    uniform_random_policy,
    uniform_slate_log_propensity,
)
from simulators.rng import make_generator
from simulators.world import make_world


def requests(b=4000):
    w = make_world(presets.tiny({"users": {"n_users": b}}), make_generator(0))
    return w, make_requests(w, torch.arange(b), make_generator(1))


def test_uniform_log_propensity_by_hand():
    assert math.isclose(uniform_slate_log_propensity(5, 2), -math.log(20))
    assert math.isclose(uniform_slate_log_propensity(20, 5), -math.log(20 * 19 * 18 * 17 * 16))


def test_uniform_random_policy_is_uniform():
    """First position over C = 20 candidates, 4000 slates: chi-square within 6 sd of its mean."""
    _, req = requests()
    slates, logp = uniform_random_policy(5, make_generator(2))(req)
    assert slates.shape == (4000, 5)
    assert bool((slates.sort(1).values.diff(dim=1) > 0).all())
    assert torch.allclose(logp, torch.full((4000,), uniform_slate_log_propensity(20, 5)))
    counts = torch.bincount(slates[:, 0], minlength=20).float()
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    assert abs(chi2 - 19) < 6 * math.sqrt(2 * 19)


def test_oracle_and_fixed_policies():
    w, req = requests(50)
    slates, logp = oracle_policy(w)(req)
    assert torch.equal(slates, oracle_slate(w, req.users, req.candidates))
    assert bool((logp == 0).all())
    slates, logp = fixed_positions_policy(5)(req)
    assert torch.equal(slates, torch.arange(5).expand(50, 5)) and bool((logp == 0).all())
