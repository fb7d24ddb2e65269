"""Presets are valid worlds with the semantics their docstrings promise."""
import pytest

from simulators import presets
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
    assert cfg.choice.model == "mnl" and cfg.choice.no_click_logit == 1.0
    assert cfg.choice.position_decay == 0 and cfg.choice.quality_weight == 0
    assert cfg.candidates.n_candidates == 100 and cfg.slate_size == 10
    assert source_counts(cfg.candidates) == {"interest": 0, "popular": 0, "fresh": 0,
                                             "random": 100}
    assert cfg.users.activity_mean == 1.0 and cfg.users.n_users == 100_000
    assert cfg.dynamics.reinforcement.enabled and cfg.dynamics.reinforcement.rule == "recsim"
