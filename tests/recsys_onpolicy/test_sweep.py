import polars as pl
import pytest

from recsys_onpolicy.sweep import SweepConfig, run_sweep, storage_url
from simulators.typed_config import ConfigError, validate


def fake_evaluate(calls):
    def evaluate(regime, lr, trial):
        calls.append((regime, lr, trial))
        # a known trade-off: gain and drop both grow with log lr
        return {"target/gain": lr * 10, "probe/drop": lr * (5 if regime == "sft" else 1)}, 7
    return evaluate


def test_sweep_rows_and_resume(tmp_path):
    cfg = validate(SweepConfig, {"regimes": ["sft", "grpo"], "trials": 3})
    url = storage_url(cfg, tmp_path)
    calls = []
    frame = run_sweep(cfg, url, "lr_sweep", fake_evaluate(calls))
    assert len(calls) == 6
    lrs = frame.filter(pl.col("metric") == "sweep/lr")
    assert lrs.height == 6 and lrs["value"].min() >= 1e-4 and lrs["value"].max() <= 1e-1
    wide = frame.pivot(on="metric", index=["regime", "seed"], values="value")
    assert (wide["target/gain"] - wide["sweep/lr"] * 10).abs().max() < 1e-12
    assert set(frame["step"].to_list()) == {7}
    # resuming with a larger budget only runs the missing trials
    cfg2 = cfg.model_copy(update={"trials": 4})
    calls2 = []
    frame2 = run_sweep(cfg2, url, "lr_sweep", fake_evaluate(calls2))
    assert len(calls2) == 2
    assert frame2.filter(pl.col("metric") == "sweep/lr").height == 8


def test_bad_range():
    with pytest.raises(ConfigError, match="lr_low"):
        validate(SweepConfig, {"lr_low": 0.5, "lr_high": 0.1})
