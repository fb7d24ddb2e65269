"""WorldConfig: defaults, range checks, cross-field rules, messages that name field and fix."""
import pytest
import torch

from simulators.config import WorldConfig, resolve_device
from simulators.typed_config import ConfigError, validate


def test_defaults_are_valid_and_documented():
    cfg = WorldConfig()
    assert cfg.emb_dim == cfg.items.dim
    assert cfg.catalogue_size(10) == cfg.items.n_items + 10 * cfg.items.items_per_day
    for model in [type(cfg), type(cfg.users), type(cfg.items), type(cfg.choice),
                  type(cfg.dynamics.drift), type(cfg.candidates)]:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


def test_topics_representation_uses_n_topics_as_dim():
    cfg = validate(WorldConfig, {"items": {"representation": "topics", "n_topics": 7}})
    assert cfg.emb_dim == 7


@pytest.mark.parametrize("data, needle", [
    ({"users": {"n_users": -5}}, "users.n_users = -5"),
    ({"users": {"n_users": "many"}}, "users.n_users = 'many'"),
    ({"choice": {"model": "logit"}}, "choice.model = 'logit'"),
    ({"dynamics": {"drift": {"pull": 1.5}}}, "dynamics.drift.pull = 1.5"),
    ({"items": {"colour": 3}}, "items.colour: unknown key"),
])
def test_bad_field_names_path_value_and_range(data, needle):
    with pytest.raises(ConfigError) as err:
        validate(WorldConfig, data)
    assert needle in str(err.value)


def test_range_message_gives_the_allowed_range():
    with pytest.raises(ConfigError, match=r"allowed: > 0"):
        validate(WorldConfig, {"users": {"n_users": 0}})


@pytest.mark.parametrize("data, needle", [
    ({"slate_size": 50, "candidates": {"n_candidates": 20}}, "slate_size = 50 > candidates"),
    ({"items": {"n_items": 10}}, "items.n_items = 10 < candidates.n_candidates = 100"),
    ({"candidates": {"random": 0.9}}, "must sum to 1"),
    ({"dynamics": {"reinforcement": {"rule": "recsim"}}}, "needs items.representation"),
    ({"device": "tpu"}, "device = 'tpu'"),
])
def test_cross_field_rules(data, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(WorldConfig, data)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
