"""Candidate generation: distinct ids in range for any mix, the sources do what they say."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import presets
from simulators.candidates import (
    build_index,
    sample_candidates,
    source_counts,
)
from simulators.config import CandidateConfig
from simulators.rng import make_generator
from simulators.world import make_world


def mix(interest=0.0, popular=0.0, fresh=0.0, random=0.0):
    return {"interest": interest, "popular": popular, "fresh": fresh, "random": random}


def test_source_counts_largest_remainder():
    # raw 3.7, 3.3, 1.8, 1.2: floors sum to 8, the two largest remainders (fresh, interest) get +1
    c = CandidateConfig(n_candidates=10, interest=0.37, popular=0.33, fresh=0.18, random=0.12)
    assert source_counts(c) == {"interest": 4, "popular": 3, "fresh": 2, "random": 1}


shares = st.tuples(*[st.integers(0, 4)] * 4).filter(lambda t: sum(t) > 0)


@settings(max_examples=15, deadline=None)
@given(shares, st.integers(5, 40), st.integers(40, 120), st.integers(0, 1000))
def test_candidates_are_distinct_and_in_range(parts, c, n_items, seed):
    total = sum(parts)
    m = dict(zip(["interest", "popular", "fresh", "random"], [p / total for p in parts]))
    m["random"] = max(0.0, 1.0 - m["interest"] - m["popular"] - m["fresh"])
    cfg = presets.tiny({"items": {"n_items": n_items}, "slate_size": 2,
                        "candidates": {"n_candidates": c, **m}})
    w = make_world(cfg, make_generator(seed))
    g = make_generator(seed + 1)
    cand = sample_candidates(w, torch.arange(50), g)
    assert cand.shape == (50, c) and cand.dtype == torch.long
    assert bool(((cand >= 0) & (cand < n_items)).all())
    assert bool((cand.sort(1).values.diff(dim=1) > 0).all())  # distinct per row


def test_random_source_is_uniform_over_items_and_positions():
    """200 items, C = 20, 20k requests: each (position, item) cell expects 100 draws."""
    cfg = presets.tiny({"items": {"n_items": 200}, "candidates": {"n_candidates": 20,
                                                                  **mix(random=1.0)}})
    w = make_world(cfg, make_generator(0))
    g = make_generator(1)
    cand = torch.cat([sample_candidates(w, torch.arange(2000), g, build_index(w, g))
                      for _ in range(10)])  # (20000, 20), a new permutation each time
    counts = torch.stack([torch.bincount(cand[:, j], minlength=200) for j in range(20)]).float()
    chi2 = float(((counts - 100.0) ** 2 / 100.0).sum())
    dof = 20 * 199
    assert abs(chi2 - dof) < 6 * (2 * dof) ** 0.5  # chi-square within 6 sd of its mean


def test_fresh_source_draws_only_recent_items():
    cfg = presets.tiny({"items": {"items_per_day": 30}, "candidates": {
        "n_candidates": 20, "fresh_days": 2, **mix(fresh=0.5, random=0.5)}})
    w = make_world(cfg, make_generator(0))
    w.day = 5
    w.items.birth_day[-60:-30] = 4  # pretend the last 60 items arrived on days 4 and 5
    w.items.birth_day[-30:] = 5
    idx = build_index(w, make_generator(1))
    assert idx.fresh_start == 300 - 60
    cfg_fresh = presets.tiny({"candidates": {"n_candidates": 20, "fresh_days": 2,
                                             **mix(fresh=1.0)}})
    w.cfg = cfg_fresh
    cand = sample_candidates(w, torch.arange(40), make_generator(2), idx)
    assert bool((cand >= 240).all())


def test_popular_source_follows_click_counters():
    cfg = presets.tiny({"candidates": {"n_candidates": 20, **mix(popular=0.5, random=0.5)}})
    w = make_world(cfg, make_generator(0))
    w.items.popularity[7] = 3000.0  # weight 3001 among 299 others of weight 1: P = 0.909
    cand = sample_candidates(w, torch.arange(200), make_generator(1))
    share = float((cand == 7).any(1).float().mean())
    assert share > 0.99  # 10 popular draws per request: P(item 7 missing) = 0.09^10


def test_interest_source_prefers_the_users_topics():
    cfg = presets.tiny({"users": {"n_modes": 1, "user_spread": 0.02, "cohort_spread": 0.02},
                        "items": {"item_spread": 0.02},
                        "candidates": {"n_candidates": 20, "interest_sharpness": 20.0,
                                       **mix(interest=1.0)}})
    w = make_world(cfg, make_generator(0))
    users = torch.arange(100)
    cand = sample_candidates(w, users, make_generator(1))
    best_topic = (w.users.interests[users, 0] @ w.topic_centres.T).argmax(1)  # (B,)
    on_topic = (w.items.topic[cand] == best_topic.unsqueeze(1)).float().mean()
    assert on_topic > 0.5  # uniform retrieval would give about 1/8


def test_candidates_depend_on_the_world_and_the_generator_only():
    """Without an index the draw is a function of (world, gen): earlier calls and clones do not
    change it, and the world is not written to."""
    w = make_world(presets.tiny(), make_generator(0))
    users = torch.arange(40)
    first = sample_candidates(w, users, make_generator(7))
    sample_candidates(w, users, make_generator(8))  # another caller, another stream
    assert torch.equal(sample_candidates(w, users, make_generator(7)), first)
    assert torch.equal(sample_candidates(w.clone(), users, make_generator(7)), first)
    assert not torch.equal(sample_candidates(w, users, make_generator(8)), first)


@pytest.mark.parametrize("n_items", [20, 21, 25])
def test_tiny_catalogue_still_gives_distinct_rows(n_items):
    cfg = presets.tiny({"items": {"n_items": n_items}, "candidates": {
        "n_candidates": 20, **mix(interest=0.5, popular=0.5)}})
    w = make_world(cfg, make_generator(0))
    cand = sample_candidates(w, torch.arange(30), make_generator(1))
    assert bool((cand.sort(1).values.diff(dim=1) > 0).all())
