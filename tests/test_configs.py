"""Every file under configs/ is loaded and validated the way the CLI does it, says what its
experiment promises (regimes, seeds, controls, sweeps), and is smoke-run through the CLI at a
tiny budget (`--set` overrides): metrics in the long schema, forgetting rows, and a report whose
PNGs open.

The fast variants run a subset of each config's regimes (the daily-loop tests in
tests/recsys_onpolicy/test_loop.py already run every preset); the `slow` variants run the full
regime lists at the same tiny budget.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from recsys_onpolicy import cli
from recsys_onpolicy.experiment import (
    RecsysExperiment,
    expand,
    load_experiment_data,
    regime_label,
    validate_experiment,
)
from recsys_onpolicy.regimes.config import PRESETS, resolve_regime
from recsys_onpolicy.results import SCHEMA, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
RECSYS = ["quickstart.yaml", "recsys/cohort_removal.yaml", "recsys/feedback_loop.yaml",
          "recsys/dense_vs_sparse.yaml", "recsys/kl_ablation.yaml", "recsys/ppo_epochs.yaml",
          "recsys/lr_sweep.yaml"]
LLM = ["llm/mixture_toy.yaml", "llm/tiny_lm_recipe.yaml"]

# A world and model small enough that a run of 2 days takes well under a second.
TINY = [
    "run.world.users.n_users=160", "run.world.items.n_items=200",
    "run.world.items.items_per_day=5", "run.world.candidates.n_candidates=20",
    "run.world.slate_size=5", "run.world.history_len=5",
    "run.model.embedding_dim=8", "run.model.head_width=16", "run.model.device=cpu",
    "run.days=2", "run.removal.from_day=1", "run.warmup.days=1", "run.warmup.epochs=1",
    "run.serve_batch_size=256", "run.train_batch_size=32", "run.probe_requests=20",
    "probes.users_per_cohort=10", "seeds=1", "jobs=1",
]


def rel(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def experiment(name: str) -> RecsysExperiment:
    exp = validate_experiment(load_experiment_data(CONFIGS / name), source=f"{name}: ")
    assert isinstance(exp, RecsysExperiment)
    return exp


def report_images(html: str) -> list[np.ndarray]:
    """Decode every embedded PNG of a report (each must open) as an RGB array."""
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def colours(img: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3) uint8 image."""
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    return len(np.unique(packed))


def assert_report_renders(run_dir: Path, min_images: int) -> None:
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    images = report_images(html)
    assert len(images) >= min_images
    for img in images:
        h, w, _ = img.shape
        assert h > 100 and w > 100
        assert colours(img) > 10  # something is drawn, not a blank canvas


# ---- every file loads and validates ---------------------------------------------------------


def test_configs_folder_holds_the_experiments():
    """The experiments of the README exist (any other file is still validated below)."""
    assert set(RECSYS + LLM) <= {rel(p) for p in ALL_CONFIGS}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=rel)
def test_every_config_loads_and_validates(path):
    data = load_experiment_data(path)
    assert data["domain"] in ("recsys", "llm")
    validate_experiment(data, source=f"{path}: ")
    validate_experiment(load_experiment_data(path, seeds=2), source=f"{path}: ")  # --seeds 2
    assert "#" in path.read_text(), "a config a user copies explains its keys in comments"


@pytest.mark.parametrize("name", RECSYS)
def test_recsys_configs_are_complete(name, tmp_path):
    exp = experiment(name)
    assert exp.domain == "recsys"
    assert exp.experiment == Path(name).stem
    assert len(exp.description) > 40
    text = (CONFIGS / name).read_text()
    for key in ("seeds:" if name != "recsys/lr_sweep.yaml" else "seed:", "regimes:", "run:",
                "world:", "model:", "days:", "removal:", "probes:"):
        assert key in text, f"{name} should spell out {key!r} for the user"
    tasks = expand(exp, tmp_path)
    assert len(tasks) >= 1
    assert len({t.out for t in tasks}) == len(tasks)


@pytest.mark.parametrize("name", RECSYS)
def test_no_regime_gets_its_own_learning_rate_or_temperature(name):
    """Regimes are compared at the model's learning rates and the served temperature, the same
    for all; only the sweep varies learning rates (fairness: no regime is tuned to win)."""
    exp = experiment(name)
    for spec in exp.regimes:
        regime = resolve_regime({k: v for k, v in spec.items() if k != "name"}
                                if isinstance(spec, dict) else spec)
        assert regime.dense_lr is None and regime.sparse_lr is None and regime.temperature is None
    for overrides in exp.variants.values():
        assert not any("lr" in key for key in overrides)


@pytest.mark.parametrize("name", LLM)
def test_llm_configs_dispatch_to_llm_reference(name):
    data = load_experiment_data(CONFIGS / name)
    assert data["domain"] == "llm" and data["experiment"] == Path(name).stem
    bad = dict(data, not_a_field=1)
    with pytest.raises(ValueError, match="not_a_field"):
        validate_experiment(bad, source=f"{name}: ")


# ---- what each experiment promises ----------------------------------------------------------


def test_quickstart_is_the_readme_main_job():
    exp = experiment("quickstart.yaml")
    assert exp.regimes == ["supervised_daily", "grpo", "grpo_batch", "iterative_sft"]
    assert exp.seeds == 2 and exp.control and exp.run.removal.cohorts
    assert exp.run.removal.from_day < exp.run.days
    assert len(expand(exp, Path("runs/demo"))) == 4 * 2 * 2  # regimes x seeds x (run, control)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_sets_up_then_runs_the_quickstart():
    """`make demo` on a fresh clone: setup (a no-op when the venv is current), then the CLI on
    the quickstart into runs/demo (ignored by git, replaced on every demo)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert dry[0] == "bash scripts/setup.sh"
    assert dry[-1].endswith(
        "/python -m recsys_onpolicy.cli run configs/quickstart.yaml --out runs/demo --overwrite")
    assert (ROOT / "scripts" / "setup.sh").is_file()
    assert "runs/" in (ROOT / ".gitignore").read_text().split()


def test_cohort_removal_runs_every_preset_with_controls():
    exp = experiment("recsys/cohort_removal.yaml")
    assert sorted(regime_label(s) for s in exp.regimes) == sorted(PRESETS)
    assert exp.seeds == 5 and exp.control and exp.run.removal.cohorts
    assert len(expand(exp, Path("x"))) == len(PRESETS) * 5 * 2


def test_feedback_loop_has_reinforcement_for_60_days():
    exp = experiment("recsys/feedback_loop.yaml")
    assert exp.run.days == 60
    assert exp.run.world.dynamics.reinforcement.enabled
    assert exp.probes.feedback


def test_dense_vs_sparse_grows_the_head_and_shrinks_the_tables():
    exp = experiment("recsys/dense_vs_sparse.yaml")
    base = exp.run.model
    grown = [v for v in exp.variants.values()
             if v.get("model.head_width", base.head_width) > base.head_width
             or v.get("model.head_depth", base.head_depth) > base.head_depth]
    hashed = [v for v in exp.variants.values()
              if v.get("model.user_rows", exp.run.world.users.n_users) < exp.run.world.users.n_users
              and v.get("model.item_rows", exp.run.world.items.n_items) < exp.run.world.items.n_items]
    assert len(grown) >= 2 and len(hashed) >= 1
    tasks = expand(exp, Path("x"))
    assert len(tasks) == len(exp.regimes) * len(exp.variants) * exp.seeds * 2
    assert {t.config["model"]["head_width"] for t in tasks} == {64, 256}
    assert {t.config["model"]["user_rows"] for t in tasks} == {None, 1000}


def test_kl_ablation_betas_and_reinforce():
    exp = experiment("recsys/kl_ablation.yaml")
    grpo = [resolve_regime({k: v for k, v in s.items() if k != "name"}) for s in exp.regimes
            if isinstance(s, dict) and s.get("preset") == "grpo_kl"]
    assert sorted(r.beta for r in grpo) == [0.0, 0.05, 0.2]
    assert all(s.get("name") for s in exp.regimes if isinstance(s, dict))
    losses = {resolve_regime({k: v for k, v in s.items() if k != "name"}).loss for s in exp.regimes}
    assert losses == {"grpo", "reinforce"}


def test_ppo_epochs_on_policy_vs_reuse():
    exp = experiment("recsys/ppo_epochs.yaml")
    regimes = [resolve_regime({k: v for k, v in s.items() if k != "name"}
                              if isinstance(s, dict) else s) for s in exp.regimes]
    assert [(r.loss, r.epochs) for r in regimes] == [
        ("grpo", 1), ("ppo", 1), ("ppo", 2), ("ppo", 4), ("ppo", 8)]


def test_lr_sweep_section():
    exp = experiment("recsys/lr_sweep.yaml")
    assert exp.sweep is not None
    assert {"supervised_daily", "grpo", "iterative_sft"} <= set(exp.sweep.regimes)
    assert exp.sweep.storage is None  # -> sqlite:///<out>/sweep.db
    assert exp.sweep.lr_low < exp.run.model.dense_lr < exp.sweep.lr_high
    assert exp.run.removal.cohorts  # the sweep's drop is measured on the removed cohort


# ---- smoke runs through the CLI -------------------------------------------------------------


def cli_run(command: str, name: str, out: Path, extra: list[str], capsys) -> str:
    args = [command, str(CONFIGS / name), "--out", str(out), "--no-progress"]
    for override in TINY + extra:
        args += ["--set", override]
    assert cli.main(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def check_run(out: Path, exp: RecsysExperiment, stdout: str, report: bool) -> pl.DataFrame:
    frame = read_metrics(out / "metrics.parquet")
    assert dict(zip(frame.columns, frame.dtypes)) == SCHEMA
    assert sorted(frame["step"].unique()) == [0, 1, 2]
    assert "gain" in stdout and "drop" in stdout and str(out / "report.html") in stdout
    runs = frame.filter(pl.col("experiment") == exp.experiment)
    assert runs["seed"].unique().to_list() == [exp.seed]
    if exp.run.removal.cohorts:
        forgetting = frame.filter(pl.col("metric") == "probe/forgetting")
        assert set(forgetting["step"]) == {1, 2}  # D = 1 .. days
        assert set(forgetting["group"]) == {f"c{k}" for k in exp.run.removal.cohorts}
        assert "forgetting" in stdout
    if exp.control and exp.run.removal.cohorts:
        assert frame.filter(pl.col("experiment") == f"{exp.experiment}/control").height
        assert frame.filter(pl.col("metric") == "probe/forgetting_vs_control").height
    if report:
        assert_report_renders(out, min_images=3)
    return frame


SMOKE = [  # (config, extra overrides of the fast variant); the slow variant runs them all
    ("quickstart.yaml", []),
    ("recsys/cohort_removal.yaml", ["regimes=[teacher_sft,sft_on_rl_traces]"]),
    ("recsys/feedback_loop.yaml", ["regimes=[supervised_daily,grpo_batch]"]),
    ("recsys/dense_vs_sparse.yaml", ["regimes=[supervised_daily]", "control=false"]),
    ("recsys/kl_ablation.yaml", ["regimes=[{name: grpo_beta0.2, preset: grpo_kl, beta: 0.2}]"]),
    ("recsys/ppo_epochs.yaml", ["regimes=[{name: ppo_e8, preset: ppo, epochs: 8}]",
                                "control=false"]),
]


def smoke_params():
    """Fast: a regime subset, and the report rendered for the main job only (rendering its
    figures costs more than the tiny runs; test_cli and test_report cover it). Slow: every
    regime and variant, every report rendered."""
    for name, fast in SMOKE:
        yield pytest.param(name, fast, name == "quickstart.yaml", id=f"{name}-fast")
        yield pytest.param(name, [], True, id=f"{name}-full", marks=pytest.mark.slow)


def skip_report(monkeypatch) -> None:
    """Replace the report by a placeholder file (the CLI still prints the table)."""
    def placeholder(run_dir):
        path = Path(run_dir) / "report.html"
        path.write_text("<html>not rendered in this test</html>")
        return path
    monkeypatch.setattr("recsys_onpolicy.report.report_run_dir", placeholder)


@pytest.mark.parametrize("name,extra,report", list(smoke_params()))
def test_recsys_config_smoke_run(name, extra, report, tmp_path, capsys, monkeypatch):
    if not report:
        skip_report(monkeypatch)
    out = tmp_path / "run"
    stdout = cli_run("run", name, out, extra, capsys)
    exp = validate_experiment(load_experiment_data(out / "config.yaml"))
    frame = check_run(out, exp, stdout, report)
    labels = {regime_label(s) for s in exp.regimes}
    if exp.variants:
        labels = {f"{r}@{v}" for r in labels for v in exp.variants}
    assert set(frame["regime"]) == labels
    if exp.run.world.dynamics.reinforcement.enabled:
        feedback = frame.filter(pl.col("metric").str.starts_with("feedback/"))
        assert "feedback/interest_homogenisation" in set(feedback["metric"])


@pytest.mark.parametrize("regimes", [
    pytest.param("[supervised_daily,iterative_sft]", id="fast"),
    pytest.param("[supervised_daily,grpo,iterative_sft]", id="full", marks=pytest.mark.slow),
])
def test_lr_sweep_smoke_run_and_resume(regimes, tmp_path, capsys):
    out = tmp_path / "sweep"
    extra = [f"sweep.regimes={regimes}", "sweep.trials=1"]
    stdout = cli_run("sweep", "recsys/lr_sweep.yaml", out, extra, capsys)
    assert (out / "sweep.db").is_file()
    frame = read_metrics(out / "metrics.parquet")
    lrs = frame.filter(pl.col("metric") == "sweep/lr")
    n_regimes = regimes.count(",") + 1
    assert lrs.height == n_regimes and lrs["value"].is_between(1e-4, 1e-2).all()
    assert {"target/gain", "probe/drop"} <= set(frame["metric"])
    assert "lr_sweep" in stdout
    assert_report_renders(out, min_images=2)  # the sweep frontier and the KL scatter
    first = sorted((out / "trials").rglob("trial=0/metrics.parquet"))
    assert len(first) == n_regimes
    stamps = [p.stat().st_mtime_ns for p in first]
    # resumed with more trials: only the missing ones run
    args = ["sweep", str(CONFIGS / "recsys/lr_sweep.yaml"), "--out", str(out), "--resume",
            "--trials", "2", "--no-progress"]
    for override in TINY + extra:
        args += ["--set", override]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in first] == stamps  # finished trials are not rerun
    assert len(sorted((out / "trials").rglob("trial=1/metrics.parquet"))) == n_regimes
    frame = read_metrics(out / "metrics.parquet")
    assert frame.filter(pl.col("metric") == "sweep/lr").height == 2 * n_regimes


def test_mixture_toy_smoke_run(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["run", str(CONFIGS / "llm/mixture_toy.yaml"), "--out", str(out), "--no-progress"]
    for o in ("mixture_toy.bimodal.steps=3", "mixture_toy.unimodal.steps=3",
              "mixture_toy.samples_per_step=50", "mixture_toy.grid_points=100"):
        args += ["--set", o]
    assert cli.main(args) == 0, capsys.readouterr().err
    frame = read_metrics(out / "metrics.parquet")
    assert set(frame["domain"]) == {"llm"} and set(frame["experiment"]) == {"mixture_toy"}
    assert (out / "densities.png").is_file()
    assert_report_renders(out, min_images=1)


LM_TINY = [  # the budget of llm_reference.config.smoke_config
    "model.block_size=24", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
    "tasks.n_eval=16", "tasks.non_target=[addition,copying]", "pretrain.steps=30",
    "pretrain.batch_size=32", "pretrain.warmup=5", "regime.steps=2", "regime.batch_prompts=4",
    "regime.group_size=2", "regime.n_train_prompts=8", "regime.rounds=2", "eval.every=0",
    "eval.kl_prompts=4", "eval.kl_samples=2",
]


@pytest.mark.parametrize("regimes", [
    pytest.param("[teacher_sft,grpo]", id="fast"),
    pytest.param(None, id="full", marks=pytest.mark.slow),
])
def test_tiny_lm_recipe_smoke_run(regimes, tmp_path, capsys):
    out = tmp_path / "lm"
    args = ["run", str(CONFIGS / "llm/tiny_lm_recipe.yaml"), "--out", str(out), "--seeds", "1",
            "--no-progress"]
    overrides = LM_TINY + [f"runtime.cache_dir={tmp_path / 'cache'}"]
    overrides += [f"regimes={regimes}"] if regimes else []
    for o in overrides:
        args += ["--set", o]
    assert cli.main(args) == 0, capsys.readouterr().err
    frame = read_metrics(out / "metrics.parquet")
    assert set(frame["domain"]) == {"llm"} and frame["seed"].unique().to_list() == [0]
    expected = set(regimes.strip("[]").split(",")) if regimes else set(
        load_experiment_data(CONFIGS / "llm/tiny_lm_recipe.yaml")["regimes"])
    assert set(frame["regime"]) == expected
    assert {"target/gain", "probe/drop"} <= set(frame["metric"])
    assert_report_renders(out, min_images=1)


@pytest.mark.slow
def test_quickstart_full_size_measures_something(tmp_path, capsys):
    """The real main job (about 1-3 minutes on 2 cores): the removed cohort is ranked better
    than chance at D, below its oracle ceiling, and every table cell is a finite number."""
    out = tmp_path / "demo"
    assert cli.main(["run", str(CONFIGS / "quickstart.yaml"), "--out", str(out),
                     "--no-progress", "--jobs", "2"]) == 0
    stdout = capsys.readouterr().out
    exp = experiment("quickstart.yaml")
    frame = read_metrics(out / "metrics.parquet")
    removed = f"c{exp.run.removal.cohorts[0]}"
    d = exp.run.removal.from_day
    at_d = frame.filter((pl.col("group") == removed) & (pl.col("step") == d)
                        & (pl.col("experiment") == "quickstart"))
    auc = at_d.filter(pl.col("metric") == "probe/auc")["value"]
    oracle = at_d.filter(pl.col("metric") == "probe/auc_oracle")["value"]
    assert auc.len() == len(exp.regimes) * exp.seeds and (auc > 0.55).all() and (
        oracle > auc).all()
    last = frame.filter(pl.col("step") == exp.run.days)
    for metric in ("target/gain", "probe/drop", "probe/forgetting",
                   "probe/forgetting_vs_control", "probe/kl_to_base"):
        values = last.filter((pl.col("metric") == metric)
                             & (pl.col("experiment") == "quickstart"))["value"]
        assert values.len() >= len(exp.regimes) * exp.seeds and values.is_finite().all() and (
            values != 0).any()
    assert "nan" not in stdout.split("domain", 1)[1]
    assert_report_renders(out, min_images=6)
