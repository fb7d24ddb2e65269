import pytest

from recsys_onpolicy.overrides import apply_overrides, parse_override
from simulators.typed_config import ConfigError


def test_parse_values_as_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=0.5") == (["x"], 0.5)
    assert parse_override("r=[grpo, ppo]") == (["r"], ["grpo", "ppo"])
    assert parse_override("s=hello") == (["s"], "hello")


def test_apply_nested_and_copy():
    data = {"run": {"world": {"n_users": 10}}}
    out = apply_overrides(data, ["run.world.n_users=20", "run.days=3"])
    assert out == {"run": {"world": {"n_users": 20}, "days": 3}}
    assert data["run"]["world"]["n_users"] == 10  # input untouched


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "a=[1,"])
def test_malformed(bad):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [bad])


def test_cannot_descend_into_scalar():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
