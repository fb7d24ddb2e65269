"""Presets are valid worlds with the semantics their docstrings promise."""
import pytest
import torch

from simulators import choice, presets
from simulators.candidates import source_counts
from simulators.config import WorldConfig


@pytest.mark.parametrize("name", ["tiny", "default_latent", "recsim_equivalent"])
def test_presets_validate(name):
    assert isinstance(getattr(presets, name)(), WorldConfig)


def test_overrides_merge_into_nested_groups():
    cfg = presets.default_latent({"users": {"n_users": 123}, "choice": {"model": "cascade"}})
    assert cfg.users.n_users == 123 and cfg.users.n_cohorts == 8
    assert cfg.choice.model == "cascade" and cfg.choice.click_bias == -3.0


def test_recsim_equivalent_semantics():
    cfg = presets.recsim_equivalent()
    assert cfg.items.representation == "topics" and cfg.items.n_topics == 20
    # RecSim's interest-evolution environment: MultinomialProportionalChoiceModel with
    # min_normalizer -1 and no_click_mass 1, so P(k) = (x_k + 1) / (2 + sum_j (x_j + 1))
    assert cfg.choice.model == "proportional" and cfg.choice.no_click_logit == 1.0
    assert cfg.choice.min_normalizer == -1.0
    x = torch.tensor([[0.5, -1.0, 0.2]])
    want = (x + 1) / (2 + (x + 1).sum())
    assert torch.allclose(choice.click_probs(cfg.choice, x), want)
    assert cfg.choice.position_decay == 0 and cfg.choice.quality_weight == 0
    assert cfg.candidates.n_candidates == 100 and cfg.slate_size == 10
    assert source_counts(cfg.candidates) == {"interest": 0, "popular": 0, "fresh": 0,
                                             "random": 100}
    assert cfg.users.activity_mean == 1.0 and cfg.users.n_users == 100_000
    assert cfg.dynamics.reinforcement.enabled and cfg.dynamics.reinforcement.rule == "recsim"
