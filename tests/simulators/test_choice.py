"""Choice models: hand-computed probabilities, properties on arbitrary logits, and empirical click
rates against the analytic marginals."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import choice
from simulators.config import ChoiceConfig

# sigmoid(l) = 0.5, 0.25, 0.8
LOGITS = torch.tensor([[0.0, math.log(1 / 3), math.log(4.0)]])


def cfg(model, **kw):
    return ChoiceConfig(model=model, **kw)


def test_pbm_by_hand():
    p = choice.click_probs(cfg("pbm", position_decay=1.0), LOGITS)
    assert torch.allclose(p, torch.tensor([[0.5, 0.25 / 2, 0.8 / 3]]))


def test_cascade_by_hand():
    p = choice.click_probs(cfg("cascade"), LOGITS)
    assert torch.allclose(p, torch.tensor([[0.5, 0.5 * 0.25, 0.5 * 0.75 * 0.8]]))


def test_mnl_by_hand():
    p = choice.click_probs(cfg("mnl", no_click_logit=0.0, position_decay=0.0), LOGITS)
    e = torch.tensor([1.0, 1 / 3, 4.0])
    assert torch.allclose(p, (e / (e.sum() + 1.0)).unsqueeze(0))
    p = choice.click_probs(cfg("mnl", no_click_logit=0.0, position_decay=1.0), LOGITS)
    e = torch.tensor([1.0, 1 / 6, 4 / 3])  # exp(l_k) / (k + 1)
    assert torch.allclose(p, (e / (e.sum() + 1.0)).unsqueeze(0))


def test_proportional_by_hand():
    """RecSim's MultinomialProportionalChoiceModel: scores minus min_normalizer, the no-click
    option's mass included; a score below min_normalizer counts as 0."""
    scores = torch.tensor([[0.5, -1.0, 0.2, -3.0]])
    p = choice.click_probs(cfg("proportional", no_click_logit=1.0, min_normalizer=-1.0,
                               position_decay=0.0), scores)
    s = torch.tensor([1.5, 0.0, 1.2, 0.0])
    assert torch.allclose(p, (s / (2.0 + s.sum())).unsqueeze(0))
    p = choice.click_probs(cfg("proportional", no_click_logit=1.0, min_normalizer=-1.0,
                               position_decay=1.0), scores)
    s = s / torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(p, (s / (2.0 + s.sum())).unsqueeze(0))
    with pytest.raises(ValueError, match="must exceed min_normalizer"):
        cfg("proportional", no_click_logit=-1.0, min_normalizer=-1.0)


def test_mnl_matches_torch_softmax():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 5
    ref = torch.softmax(torch.cat([logits, torch.full((50, 1), 0.7)], 1), 1)[:, :-1]
    assert torch.allclose(choice.mnl_probs(logits, 0.7), ref, atol=1e-6)


def test_top_position_probs():
    assert torch.allclose(choice.top_position_probs(cfg("pbm"), LOGITS), torch.sigmoid(LOGITS))
    for one_click in (cfg("mnl", no_click_logit=1.0), cfg("proportional", no_click_logit=1.0)):
        assert torch.allclose(choice.top_position_probs(one_click, LOGITS),
                              choice.click_probs(one_click, LOGITS.T).T)  # each item alone


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(finite, min_size=4, max_size=4), min_size=1, max_size=6),
       st.sampled_from(["pbm", "cascade", "mnl", "proportional"]), st.floats(-50, 50),
       st.integers(0, 2**31))
def test_probabilities_are_valid_for_any_logits(rows, model, no_click, seed):
    c = cfg(model, no_click_logit=no_click, min_normalizer=no_click - 1.0)
    p = choice.click_probs(c, torch.tensor(rows))
    assert bool(torch.isfinite(p).all()) and bool(((p >= 0) & (p <= 1)).all())
    if choice.at_most_one_click(c):
        assert bool((p.sum(1) <= 1 + 1e-5).all())
    clicks = choice.sample_clicks(c, p, torch.Generator().manual_seed(seed))
    assert bool(((clicks == 0) | (clicks == 1)).all())
    if choice.at_most_one_click(c):
        assert bool((clicks.sum(1) <= 1).all())


N = 200_000


@pytest.mark.parametrize("model", ["pbm", "cascade", "mnl", "proportional"])
def test_empirical_click_rates_match_the_analytic_marginals(model):
    """Tolerance: 5 binomial standard errors per position (N = 200k slates, fixed seed)."""
    c = cfg(model, position_decay=0.7, no_click_logit=0.5)
    logits = torch.tensor([[1.0, -0.5, 0.3, -2.0, 0.0]])
    p = choice.click_probs(c, logits)[0]  # (K,)
    clicks = choice.sample_clicks(c, p.expand(N, -1), torch.Generator().manual_seed(1))
    rate = clicks.mean(0)
    tol = 5 * torch.sqrt(p * (1 - p) / N)
    assert bool(((rate - p).abs() <= tol).all()), (rate, p)
    if choice.at_most_one_click(c):
        none = float((clicks.sum(1) == 0).float().mean())
        q = 1 - float(p.sum())
        assert abs(none - q) <= 5 * math.sqrt(q * (1 - q) / N)
    else:  # PBM positions are independent: P(click 0 and click 1) = p0 * p1
        both = float((clicks[:, 0] * clicks[:, 1]).mean())
        q = float(p[0] * p[1])
        assert abs(both - q) <= 5 * math.sqrt(q * (1 - q) / N)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31), st.floats(0.0, 1.0))
def test_sample_choice_counts_the_cumulative_marginals_below_the_uniform(k, seed, no_click):
    """The clicked position is #{k: p_0 + ... + p_k <= u} (K: no click), one uniform per row;
    sample_exclusive is its one-hot."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(64, k, generator=g)
    p = p / p.sum(1, keepdim=True) * (1 - no_click)
    p[0] = 0.0  # zero marginals: repeated cumulative values
    chosen = choice.sample_choice(p, torch.Generator().manual_seed(seed))
    u = torch.rand(64, 1, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(chosen, (torch.cumsum(p, 1) <= u).sum(1, keepdim=True))
    clicks = choice.sample_exclusive(p, torch.Generator().manual_seed(seed))
    assert torch.equal(clicks, (torch.arange(k) == chosen).float())
