"""Ground truth: attraction logits by hand, click probabilities, the oracle slate by brute force."""
import itertools

import pytest
import torch

from simulators import choice, presets
from simulators.ground_truth import (
    affinity,
    attraction_logits,
    click_probs,
    expected_clicks,
    item_attraction,
    oracle_slate,
)
from simulators.rng import make_generator
from simulators.world import make_world


def world(**over):
    return make_world(presets.tiny(over), make_generator(0))


def test_single_mode_logit_by_hand():
    w = world(users={"n_modes": 1})
    c = w.cfg.choice
    users, items = torch.tensor([3, 7]), torch.tensor([[0, 5, 9], [1, 2, 3]])
    z = w.users.interests[users, 0]  # (B, D)
    e = w.items.emb[items]  # (B, N, D)
    want = (c.affinity_scale * torch.einsum("bd,bnd->bn", z, e)
            + c.quality_weight * w.items.quality[items] + c.click_bias)
    assert torch.allclose(attraction_logits(w, users, items), want, atol=1e-5)


def test_multi_mode_affinity_is_the_weighted_soft_maximum():
    w = world(users={"n_modes": 3})
    tau = w.cfg.choice.mode_sharpness
    users, items = torch.tensor([0, 1]), torch.tensor([[4, 5], [6, 7]])
    got = affinity(w, users, items)
    for b in range(2):
        for n in range(2):
            x = w.users.interests[users[b]] @ w.items.emb[items[b, n]]  # (M,)
            want = torch.log((w.users.mode_weights[users[b]] * torch.exp(tau * x)).sum()) / tau
            assert torch.allclose(got[b, n], want, atol=1e-5)


def test_topics_affinity_is_the_interest_in_the_topic():
    w = make_world(presets.recsim_equivalent({"users": {"n_users": 50, "n_modes": 2},
                                              "items": {"n_items": 200}}), make_generator(0))
    users, items = torch.tensor([1, 2]), torch.tensor([[3, 4, 5], [6, 7, 8]])
    x = torch.stack([w.users.interests[users[b]][:, w.items.topic[items[b]]].T
                     for b in range(2)])  # (B, N, M)
    tau = w.cfg.choice.mode_sharpness
    want = torch.logsumexp(tau * x + torch.log(w.users.mode_weights[users]).unsqueeze(1), 2) / tau
    assert torch.allclose(affinity(w, users, items), want, atol=1e-5)


def test_fatigue_lowers_the_logit_by_strength_times_exposure():
    w = world(dynamics={"fatigue": {"enabled": True, "strength": 0.5}})
    users, items = torch.tensor([2]), torch.tensor([[10, 11]])
    before = attraction_logits(w, users, items)
    w.users.fatigue[2, w.items.topic[10]] = 3.0
    after = attraction_logits(w, users, items)
    drop = before - after
    want0 = 1.5 + (1.5 if w.items.topic[11] == w.items.topic[10] else 0.0)
    assert torch.allclose(drop, torch.tensor([[1.5, want0 - 1.5]]), atol=1e-5)


@pytest.mark.parametrize("model", ["pbm", "cascade", "mnl"])
def test_click_probs_apply_the_choice_model(model):
    w = world(choice={"model": model})
    users, items = torch.tensor([0, 1, 2]), torch.tensor([[1, 2, 3, 4, 5]] * 3)
    want = choice.click_probs(w.cfg.choice, attraction_logits(w, users, items))
    assert torch.allclose(click_probs(w, users, items), want)
    assert torch.allclose(expected_clicks(w, users, items), want.sum(1))
    top = item_attraction(w, users, items)  # each item alone at the top
    alone = click_probs(w, users.repeat_interleave(5), items.reshape(-1, 1)).view(3, 5)
    assert torch.allclose(top, alone, atol=1e-6)


@pytest.mark.parametrize("model", ["pbm", "cascade", "mnl"])
def test_oracle_slate_beats_every_slate_by_brute_force(model):
    w = world(choice={"model": model, "position_decay": 0.7}, slate_size=3,
              candidates={"n_candidates": 6})
    users = torch.arange(8)
    cand = torch.stack([torch.randperm(300, generator=torch.Generator().manual_seed(u))[:6]
                        for u in range(8)])  # (B, C)
    perms = torch.tensor(list(itertools.permutations(range(6), 3)))  # (120, K)
    best = torch.stack([
        expected_clicks(w, users, cand.gather(1, p.expand(8, 3))) for p in perms]).amax(0)
    oracle = oracle_slate(w, users, cand)
    got = expected_clicks(w, users, cand.gather(1, oracle))
    assert torch.allclose(got, best, atol=1e-6)
