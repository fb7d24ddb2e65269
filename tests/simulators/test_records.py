"""Requests and DayLog: derived topics, concatenation across days, selection, empty logs."""
import torch

from simulators import presets
from simulators.day import DayLog, simulate_day
from simulators.policies import uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world


def test_cat_select_and_empty():
    w = make_world(presets.tiny(), make_generator(0))
    pol, gen = uniform_random_policy(5, make_generator(1)), make_generator(2)
    a, b = simulate_day(w, pol, gen), simulate_day(w, pol, gen)
    both = DayLog.cat([a, b])
    assert len(both) == len(a) + len(b)
    assert torch.equal(both.day, torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).long())
    assert torch.equal(both.candidate_topics, w.items.topic[both.candidates])
    assert both.item_topic.shape[0] == b.item_topic.shape[0]  # the newer, larger table
    picked = both.select(both.clicks.sum(1) > 0)
    assert bool((picked.clicks.sum(1) > 0).all()) and len(picked) < len(both)
    idx = both.select(torch.tensor([2, 0]))
    assert torch.equal(idx.users, both.users[[2, 0]])
    empty = DayLog.empty(w.items.topic, 20, 5, 5)
    assert len(DayLog.cat([empty, a])) == len(a) and empty.candidate_topics.shape == (0, 20)
    assert len(a.to("cpu")) == len(a)
