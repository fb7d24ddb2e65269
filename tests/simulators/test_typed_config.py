import pytest
from pydantic import Field

from simulators.typed_config import ConfigError, StrictModel, load_model, replace, validate


class Inner(StrictModel):
    rate: float = Field(0.5, gt=0, le=1)
    """A rate in (0, 1]."""


class Outer(StrictModel):
    n: int = Field(3, ge=1)
    """How many."""
    inner: Inner = Inner()
    """A nested section."""


def test_field_docstrings_become_descriptions():
    assert Outer.model_fields["n"].description == "How many."


def test_error_names_path_value_and_range():
    with pytest.raises(ConfigError) as e:
        validate(Outer, {"inner": {"rate": 2.0}}, source="x.yaml: ")
    msg = str(e.value)
    assert "x.yaml: inner.rate = 2.0" in msg and "<= 1" in msg and "> 0" in msg


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError) as e:
        validate(Outer, {"inner": {"rat": 0.1}})
    assert "inner.rat: unknown key" in str(e.value) and "known keys here: rate" in str(e.value)


def test_wrong_type():
    with pytest.raises(ConfigError, match=r"n = 'many'"):
        validate(Outer, {"n": "many"})


def test_load_model_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_model(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: 1\nm: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_model(Outer, bad)
    # one line naming the file, what is wrong and where (PyYAML's own report spans several)
    assert str(err.value) == (f"{bad}: not valid YAML: expected the node content, but found "
                              "'<stream end>' (line 3, column 1)")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_model(Outer, lst)
    ok = tmp_path / "ok.yaml"
    ok.write_text("n: 5\ninner: {rate: 0.25}\n")
    assert load_model(Outer, ok).inner.rate == 0.25


def test_configs_are_immutable_and_replace_validates_the_whole():
    """Assignment would bypass the enclosing config's cross-field checks, so it is refused;
    ``replace`` merges nested mappings and runs every check (here WorldConfig's C >= K)."""
    from pydantic import ValidationError

    from simulators import presets

    cfg = presets.tiny()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.candidates.n_candidates = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.slate_size = 50  # type: ignore[misc]
    assert cfg.slate_size == presets.tiny().slate_size  # nothing was kept
    more = replace(cfg, candidates={"n_candidates": cfg.candidates.n_candidates + 5})
    assert more.candidates.n_candidates == cfg.candidates.n_candidates + 5
    assert more.candidates.model_dump(exclude={"n_candidates"}) == \
        cfg.candidates.model_dump(exclude={"n_candidates"})  # merged, not reset
    with pytest.raises(ConfigError, match="n_candidates"):
        replace(cfg, candidates={"n_candidates": cfg.slate_size - 1})
    outer = replace(Outer(), inner=Inner(rate=1.0), n=4)
    assert (outer.n, outer.inner.rate) == (4, 1.0)
    with pytest.raises(ConfigError, match="inner.rate = 2.0"):
        replace(outer, inner={"rate": 2.0})


def test_yaml_with_a_key_twice_or_not_utf8_is_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("n: 3\ninner:\n  rate: 0.2\ninner:\n  rate: 0.4\n")
    with pytest.raises(ConfigError, match="'inner' appears twice"):
        load_model(Outer, twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("n: 3 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_model(Outer, latin)


@pytest.mark.parametrize("data, words", [
    ({"n": True}, "n = true: a number is expected"),
    ({"inner": {"rate": False}}, "inner: rate = false: a number is expected"),
])
def test_a_boolean_for_a_number_is_refused(data, words):
    with pytest.raises(ConfigError, match=words):
        validate(Outer, data)
    assert validate(Outer, {"n": 2, "inner": {"rate": 1}}).n == 2  # numbers still pass


def test_yaml_merge_keys_still_work(tmp_path):
    """A merge may supply a key the mapping sets again (that is not a repeat); keys that are
    not scalars give the YAML error, not a traceback."""
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {n: 3, inner: {rate: 0.2}}\nn: 5\nother:\n  <<: *b\n  n: 4\n")
    from simulators.typed_config import read_yaml

    data = read_yaml(merged)
    assert data["other"] == {"n": 4, "inner": {"rate": 0.2}}
    odd = tmp_path / "odd.yaml"
    odd.write_text("[1, 2]: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(odd)
