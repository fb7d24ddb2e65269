"""Recipe configs: the YAML file parses to the defaults, presets merge, bad values name the fix."""

from pathlib import Path

import pytest
import yaml

from llm_reference.config import (
    PRESETS,
    HFRecipeConfig,
    LMRecipeConfig,
    RuntimeConfig,
    load_recipe_config,
    smoke_config,
)
from simulators.typed_config import ConfigError, validate

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "configs" / "llm" / "tiny_lm_recipe.yaml"


def test_config_file_is_the_documented_default():
    cfg = load_recipe_config(YAML)
    assert isinstance(cfg, LMRecipeConfig)
    assert cfg == LMRecipeConfig()
    assert cfg.domain == "llm" and cfg.experiment == "tiny_lm_recipe"
    assert cfg.regimes == list(PRESETS) and cfg.seeds == [0, 1, 2]


def test_every_field_is_documented():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no docstring"
            sub = f.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)

    walk(LMRecipeConfig)
    walk(HFRecipeConfig)


def test_presets_merge_shared_then_preset_then_overrides():
    cfg = LMRecipeConfig(
        regime={"beta": 0.3, "lr": 1e-3},
        overrides={"grpo_kl": {"beta": 0.1}, "teacher_sft": {"lr": 1e-4}},
    )
    assert cfg.regime_config("grpo").beta == 0.0
    assert cfg.regime_config("grpo_kl").beta == 0.1
    assert cfg.regime_config("reinforce").beta == 0.3
    assert cfg.regime_config("teacher_sft").lr == 1e-4
    assert LMRecipeConfig().regime_config("grpo_kl").beta == 0.05


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"n_embd": 30, "n_head": 4}}, "not divisible by n_head"),
        ({"regime": {"rounds": 5, "steps": 3}}, "rounds = 5 > steps = 3"),
        ({"overrides": {"grpo": {"lr": -1}}}, "overrides.grpo: lr = -1"),
        ({"overrides": {"grpo": {"lrr": 1}}}, "overrides.grpo: lrr: unknown key"),
        ({"overrides": {"ppo": {"lr": 1}}}, "overrides.ppo"),
        ({"regimes": ["grpo", "dpo"]}, "regimes.1"),
        ({"regimes": ["grpo", "grpo"]}, r"regimes lists \['grpo'\] more than once"),
        ({"seeds": []}, "seeds"),
        ({"model": {"block_size": 12}}, "raise block_size to at least 16"),
        ({"regime": {"max_new_tokens": 5}}, "raise it to at least 6"),
        ({"tasks": {"string_min_len": 6}}, "string_min_len = 6 > string_max_len = 5"),
        ({"tasks": {"non_target": ["copying", "copying"]}}, "tasks.non_target lists"),
        ({"pretrain": {"target_share": 1.5}}, r"pretrain.target_share = 1.5.*<= 1.0"),
        ({"runtime": {"precision": "8-bit"}}, "runtime.precision"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"regime": {"kl_estimator": "k1"}}, r"kl_estimator = 'k1' .*\(grpo_kl\).*zero expected"),
        # evaluation generates with the shared setting even when every preset overrides it
        ({"regimes": ["grpo"], "regime": {"max_new_tokens": 3},
          "overrides": {"grpo": {"max_new_tokens": 8}}}, r"= 3 \(evaluation\)"),
        # sft_on_rl_traces runs grpo, listed or not
        ({"regimes": ["sft_on_rl_traces"], "overrides": {"grpo": {"max_new_tokens": 3}}},
         r"= 3 \(grpo\)"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        validate(LMRecipeConfig, data)


def test_yaml_loader_picks_the_hf_config_and_checks_domain(tmp_path):
    hf = tmp_path / "hf.yaml"
    hf.write_text(
        yaml.safe_dump({"domain": "llm", "experiment": "hf_recipe", "model": {"path": "/nowhere"}})
    )
    cfg = load_recipe_config(hf)
    assert isinstance(cfg, HFRecipeConfig) and cfg.model.path == "/nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"domain": "recsys"}))
    with pytest.raises(ConfigError, match="domain = 'recsys'"):
        load_recipe_config(bad)
    tmpl = tmp_path / "tmpl.yaml"
    tmpl.write_text(yaml.safe_dump({"model": {"path": "/x", "prompt_template": "Q: {question}"}}))
    with pytest.raises(ConfigError, match="no '\\{prompt\\}' slot"):
        load_recipe_config(tmpl)


def test_smoke_config_is_small_and_valid():
    cfg = smoke_config()
    assert cfg.seeds == [0] and cfg.regime.steps <= 3 and cfg.pretrain.steps <= 50
    assert smoke_config(regimes=["grpo"]).regimes == ["grpo"]


def test_runtime_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_ONPOLICY_CACHE", str(tmp_path))
    assert RuntimeConfig().resolved_cache_dir() == tmp_path / "llm_reference"
    assert RuntimeConfig(cache_dir=str(tmp_path / "c")).resolved_cache_dir() == tmp_path / "c"
    assert RuntimeConfig().threads == 1


def test_k1_is_fine_where_no_regime_has_a_kl_penalty():
    cfg = validate(LMRecipeConfig, {"regimes": ["grpo", "teacher_sft"],
                                    "regime": {"kl_estimator": "k1"}})
    assert cfg.regime_config("grpo").beta == 0.0
