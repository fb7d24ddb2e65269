"""The `recsys-onpolicy` command line, in-process (`cli.main([...])`): every command on a tiny
experiment, `--help` everywhere, and the error paths (missing config, bad `--set`, bad values
named by their field path, an existing output folder left untouched, `--resume` after a crash,
`compare` / `report` of a folder that holds no run)."""
from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image
from polars.testing import assert_frame_equal

from recsys_onpolicy import cli, loop
from recsys_onpolicy.results import read_metrics

# 2 cohorts of 60 users, C = 20, K = 5, a D = 8 model; cohort 1 leaves the stream after day 1.
TINY = {
    "domain": "recsys",
    "experiment": "tiny",
    "description": "CLI test",
    "seeds": 1,
    "regimes": ["supervised_daily", "grpo"],
    "jobs": 1,
    "run": {
        "world": {"users": {"n_users": 120, "n_cohorts": 2},
                  "items": {"n_items": 150, "n_topics": 8, "dim": 8, "items_per_day": 5},
                  "candidates": {"n_candidates": 20}, "slate_size": 5, "history_len": 5},
        "model": {"embedding_dim": 8, "head_width": 16, "device": "cpu"},
        "days": 2,
        "removal": {"cohort": 1, "from_day": 1},
        "serve_batch_size": 256, "train_batch_size": 32, "probe_requests": 20,
        "warmup": {"days": 1},
    },
    "probes": {"users_per_cohort": 15},
}
SWEEP = {"regimes": ["supervised_daily"], "trials": 1, "lr_low": 1e-4, "lr_high": 1e-2}


def write_config(folder: Path, data: dict = TINY, name: str = "tiny.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (mtime_ns, sha256)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pngs(html_path: Path) -> list[np.ndarray]:
    """Every PNG embedded in an HTML file, decoded (each must open)."""
    html = html_path.read_text(encoding="utf-8")
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def colours(img: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3) uint8 image."""
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    return len(np.unique(packed))


def assert_real_images(images: list[np.ndarray], at_least: int) -> None:
    assert len(images) >= at_least
    for img in images:
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert colours(img) > 10  # something is drawn, not a blank canvas


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished `run` of the tiny experiment: (config path, run dir, stdout)."""
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root)
    out = root / "run"
    capture = io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(capture):
        assert run_cli("run", config, "--out", out, "--no-progress") == 0
    return config, out, capture.getvalue()


# ---- --help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["sweep"], ["report"], ["compare"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: recsys-onpolicy")
    if not command:
        assert all(c in text for c in ("run", "sweep", "report", "compare"))
    if command in (["run"], ["sweep"]):
        assert all(flag in text for flag in ("--set", "--out", "--resume", "--overwrite"))


def test_no_command_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ---- run, report, compare -------------------------------------------------------------------


def test_run_writes_the_run_directory(finished):
    config, out, stdout = finished
    assert yaml.safe_load((out / "config.yaml").read_text()) == yaml.safe_load(config.read_text())
    frame = read_metrics(out / "metrics.parquet")
    assert set(frame["regime"]) == {"supervised_daily", "grpo"}
    assert set(frame["experiment"]) == {"tiny", "tiny/control"}
    for regime in ("supervised_daily", "grpo"):
        for run in ("seed=0", "seed=0-control"):
            folder = out / "runs" / "base" / regime / run
            assert (folder / "metrics.parquet").is_file() and (folder / "checkpoint.pt").is_file()
            assert sorted(p.name for p in (folder / "logs").iterdir()) == [
                "day=0001", "day=0002"]  # world days: 1 warm-up day, then the 2 experiment days
    # the Gain/Drop/forgetting table is printed, one row per (experiment, regime)
    header = next(line for line in stdout.splitlines() if line.startswith("domain"))
    for column in ("gain", "drop", "forgetting", "forgetting vs control", "KL to base"):
        assert column in header
    assert sum(line.startswith("recsys  tiny") for line in stdout.splitlines()) == 4
    assert f"report:  {out / 'report.html'}" in stdout


def test_report_pngs_open(finished):
    _, out, _ = finished
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained
    assert 'id="forgetting"' in html and 'id="auc"' in html
    assert_real_images(pngs(out / "report.html"), at_least=5)


def test_report_command_rewrites_the_report(finished, tmp_path, capsys):
    _, out, _ = finished
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metrics.parquet", "config.yaml"):
        shutil.copy(out / name, copy / name)
    assert run_cli("report", copy) == 0
    stdout = capsys.readouterr().out
    assert "forgetting vs control" in stdout and str(copy / "report.html") in stdout
    assert_real_images(pngs(copy / "report.html"), at_least=5)


def test_compare_two_run_dirs(finished, tmp_path, capsys):
    _, out, _ = finished
    other = tmp_path / "other"
    other.mkdir()
    frame = read_metrics(out / "metrics.parquet").with_columns(experiment=pl.lit("tiny2"))
    frame.write_parquet(other / "metrics.parquet")
    target = tmp_path / "cmp.html"
    assert run_cli("compare", out, other, "--out", target) == 0
    assert str(target) in capsys.readouterr().out
    html = target.read_text(encoding="utf-8")
    assert "tiny2" in html
    assert_real_images(pngs(target), at_least=1)


def test_compare_out_must_be_an_html_path(finished, tmp_path, capsys):
    _, out, _ = finished
    before = snapshot(out)
    assert run_cli("compare", out, "--out", out / "metrics.parquet") == 2
    assert ".html" in capsys.readouterr().err
    assert snapshot(out) == before


def test_compare_of_a_missing_dir(finished, tmp_path, capsys):
    _, out, _ = finished
    target = tmp_path / "cmp.html"
    assert run_cli("compare", out, tmp_path / "nowhere", "--out", target) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "metrics.parquet" in err and err.count("\n") == 1
    assert not target.exists()


def test_compare_of_the_same_run_twice(finished, tmp_path, capsys):
    _, out, _ = finished
    target = tmp_path / "cmp.html"
    assert run_cli("compare", out, out, "--out", target) == 2
    assert "in both" in capsys.readouterr().err
    assert not target.exists()


def test_compare_never_replaces_a_runs_report(finished, tmp_path, capsys):
    """--out may replace an earlier comparison, never a run's report.html or another file."""
    _, out, _ = finished
    other = tmp_path / "other"
    other.mkdir()
    read_metrics(out / "metrics.parquet").with_columns(experiment=pl.lit("tiny2")).write_parquet(
        other / "metrics.parquet")
    before = snapshot(out)
    assert run_cli("compare", out, other, "--out", out / "report.html") == 2
    assert "not a comparison page" in capsys.readouterr().err
    assert snapshot(out) == before
    target = tmp_path / "cmp.html"
    assert run_cli("compare", out, other, "--out", target) == 0
    assert run_cli("compare", out, other, "--out", target) == 0  # an earlier comparison: replaced


def test_compare_refuses_to_pool_one_experiment_from_two_different_runs(finished, tmp_path,
                                                                          capsys):
    """Two folders with the same experiment name and other seeds are pooled as seeds only when
    their configs agree; a longer run of another config would mix horizons in the table."""
    _, out, _ = finished
    for name, days in (("same", 2), ("longer", 9)):
        d = tmp_path / name
        d.mkdir()
        read_metrics(out / "metrics.parquet").with_columns(
            pl.col("seed") + 100).write_parquet(d / "metrics.parquet")
        data = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        assert data["run"]["days"] == 2
        data["run"]["days"], data["seed"], data["jobs"] = days, 100, 2  # jobs: no effect
        (d / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    assert run_cli("compare", out, tmp_path / "same", "--out", tmp_path / "a.html") == 0
    capsys.readouterr()
    assert run_cli("compare", out, tmp_path / "longer", "--out", tmp_path / "b.html") == 2
    err = capsys.readouterr().err
    assert "config.yaml differ" in err and "--set experiment=" in err and err.count("\n") == 1
    assert not (tmp_path / "b.html").exists()


def test_report_of_an_empty_or_foreign_metrics_file_is_one_line(finished, tmp_path, capsys):
    _, out, _ = finished
    for name, frame in (("empty", read_metrics(out / "metrics.parquet").head(0)),
                        ("foreign", pl.DataFrame({"a": [1.0]}))):
        d = tmp_path / name
        d.mkdir()
        frame.write_parquet(d / "metrics.parquet")
        (d / "report.html").write_text("keep me", encoding="utf-8")
        assert run_cli("report", d) == 2
        err = capsys.readouterr().err
        assert str(d / "metrics.parquet") in err and err.count("\n") == 1, err
        assert (d / "report.html").read_text(encoding="utf-8") == "keep me"
    assert "missing columns" in err


def test_report_of_a_folder_without_a_run(tmp_path, capsys):
    assert run_cli("report", tmp_path) == 2
    assert "metrics.parquet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- error paths: nothing is touched --------------------------------------------------------


def test_missing_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("run", tmp_path / "missing.yaml", "--out", out) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and err.startswith("recsys-onpolicy run: error:")
    assert not out.exists()


@pytest.mark.parametrize("override,expected", [
    ("run.days", "expected KEY=VALUE"),
    ("=3", "dotted path"),
    ("run.days=[1, 2", "not valid YAML"),
    ("run.days.x=3", "run.days is a int"),
])
def test_bad_set_syntax(override, expected, tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    assert run_cli("run", config, "--set", override, "--out", out) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err  # one line, not PyYAML's multi-line report
    assert not out.exists()


def test_bad_set_yaml_says_where(tmp_path, capsys):
    assert run_cli("run", write_config(tmp_path), "--set", "run.days=[1, 2",
                   "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("not valid YAML: expected ',' or ']', but got '<stream end>' "
                        "(line 1, column 6)"), err


@pytest.mark.parametrize("override,path", [
    ("run.days=0", "run.days"),
    ("run.world.users.n_users=-5", "run.world.users.n_users"),
    ("run.model.embedding_dim=6", "embedding_dim"),
    ("probes.users_per_cohort=zero", "probes.users_per_cohort"),
    ("run.dayz=3", "dayz"),
    ("regimes=[grpo, not_a_preset]", "not_a_preset"),
    ("run.removal.cohort=7", "removal.cohort"),
])
def test_bad_value_names_the_field(override, path, tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    assert run_cli("run", config, "--set", override, "--out", out) == 2
    err = capsys.readouterr().err
    assert path in err and str(config) in err
    assert not out.exists()


def test_bad_arguments(tmp_path, capsys):
    config = write_config(tmp_path)
    for args in (["--seeds", "0"], ["--jobs", "two"], ["--resume", "--overwrite"]):
        with pytest.raises(SystemExit) as exit_:
            run_cli("run", config, "--out", tmp_path / "out", *args)
        assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_out_is_left_untouched(finished, capsys):
    config, out, _ = finished
    before = snapshot(out)
    assert run_cli("run", config, "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_resume_with_another_config_is_refused(finished, capsys):
    config, out, _ = finished
    before = snapshot(out)
    assert run_cli("run", config, "--out", out, "--resume", "--set", "run.days=3") == 2
    assert "config differs" in capsys.readouterr().err
    assert snapshot(out) == before


class Crash(RuntimeError):
    """Stands in for a killed process."""


def crash_after(monkeypatch, days: int) -> list[int]:
    """Make the daily loop raise on its (days + 1)-th simulated day; returns the call log."""
    calls, real = [], loop.run_day

    def run_day(state, out):
        calls.append(state.day)
        if len(calls) > days:
            raise Crash("killed")
        real(state, out)
    monkeypatch.setattr(loop, "run_day", run_day)
    return calls


def test_resume_continues_after_a_crash(finished, tmp_path, monkeypatch, capsys):
    config, done, _ = finished
    out = tmp_path / "run"
    calls = crash_after(monkeypatch, days=3)  # run 1: 2 days, run 2: 1 day, then killed
    with pytest.raises(Crash):
        run_cli("run", config, "--out", out, "--no-progress")
    assert not (out / "metrics.parquet").exists()
    monkeypatch.undo()
    calls = crash_after(monkeypatch, days=100)
    monkeypatch.setattr("recsys_onpolicy.report.report_run_dir",
                        lambda d: Path(d) / "report.html")  # rendering is tested above
    assert run_cli("run", config, "--out", out, "--resume", "--no-progress") == 0
    assert len(calls) == 4 * 2 - 3  # only the missing days ran
    resumed = read_metrics(out / "metrics.parquet")
    keys = ["experiment", "regime", "seed", "step", "metric", "group"]
    assert_frame_equal(resumed.sort(keys), read_metrics(done / "metrics.parquet").sort(keys))


def test_overwrite_replaces_the_folder(tmp_path, monkeypatch):
    config = write_config(tmp_path, dict(TINY, seeds=2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("seeds: 2\n")  # an earlier run
    (out / "old.txt").write_text("from an earlier run")
    crash_after(monkeypatch, days=0)
    with pytest.raises(Crash):
        run_cli("run", config, "--out", out, "--overwrite", "--seeds", "3", "--no-progress")
    assert not (out / "old.txt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["seeds"] == 3  # --seeds wins


def test_overwrite_deletes_only_run_folders(tmp_path, capsys):
    """Not a folder without config.yaml, not one holding the config being run or the working
    directory, not through a symbolic link; nothing is touched."""
    config = write_config(tmp_path / "cfg")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert run_cli("run", config, "--out", notes, "--overwrite") == 2
    assert "holds no config.yaml" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"
    (tmp_path / "cfg" / "config.yaml").write_text("seeds: 1\n")  # looks like a run folder
    before = snapshot(tmp_path / "cfg")
    assert run_cli("run", config, "--out", tmp_path / "cfg", "--overwrite") == 2
    assert "which holds" in capsys.readouterr().err
    assert snapshot(tmp_path / "cfg") == before
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "cfg")
    assert run_cli("run", config, "--out", link, "--overwrite") == 2
    assert "symbolic link" in capsys.readouterr().err
    assert snapshot(tmp_path / "cfg") == before


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run folder to spoil."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def test_overwrite_may_rerun_a_run_from_its_own_config(finished, tmp_path, monkeypatch):
    out = copy_of(finished[1], tmp_path)
    stored = (out / "config.yaml").read_text()
    (out / "extra.txt").write_text("from the earlier run")
    crash_after(monkeypatch, days=0)  # the rerun itself is tested above
    with pytest.raises(Crash):
        run_cli("run", out / "config.yaml", "--out", out, "--overwrite", "--no-progress")
    assert not (out / "extra.txt").exists() and (out / "config.yaml").read_text() == stored


def test_bad_variant_is_refused_before_the_run_folder_is_touched(finished, tmp_path, capsys):
    config, done, _ = finished
    out = copy_of(done, tmp_path)
    before = snapshot(out)
    assert run_cli("run", config, "--out", out, "--overwrite", "--set",
                   "variants={v: {model.head_widht: 3}}") == 2
    assert "variant v" in capsys.readouterr().err and "head_widht" not in str(before)
    assert snapshot(out) == before


@pytest.mark.parametrize("override, words", [
    ("run.days=true", "a number is expected"),
    ("run.removal.cohort=true", "a number is expected"),
    ("regimes=[{preset: grpo_kl, kl_estimator: k1}]", "kl_estimator = 'k1'"),
])
def test_values_that_would_run_silently_wrong_are_refused(override, words, tmp_path, capsys):
    config = write_config(tmp_path)
    assert run_cli("run", config, "--out", tmp_path / "out", "--set", override) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("config, override", [
    (None, "run.model.device=cuda"),  # the tiny recsys config
    ("configs/llm/mixture_toy.yaml", "mixture_toy.device=cuda"),
    ("configs/llm/tiny_lm_recipe.yaml", "runtime.accelerator=gpu"),
])
def test_cuda_without_a_gpu_is_refused_before_the_run(config, override, tmp_path, capsys):
    path = write_config(tmp_path) if config is None else Path(__file__).parents[2] / config
    assert run_cli("run", path, "--out", tmp_path / "out", "--set", override) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    # one process: tables (with their Adagrad state) larger than the memory given
    (["--set", "run.model.sharding.memory_per_rank_gib=0.00001"], "do not fit"),
    # two processes: the planner's dry run for 2 ranks refuses before torchrun starts
    (["--nproc", "2", "--set", "run.model.sharding.memory_per_rank_gib=0.00001"], "2 process(es)"),
    (["--nproc", "2", "--set", "run.model.sharding.types=[row_wise]"], "need CUDA"),
    (["--set", "variants={big: {model.sharding.memory_per_rank_gib: 0.00001}}"], "variant big"),
])
def test_a_sharding_plan_that_cannot_work_is_refused_before_the_run(args, words, tmp_path,
                                                                     capsys):
    """One error line naming the tables and the fix (no traceback), and no run folder."""
    config = write_config(tmp_path)
    assert run_cli("run", config, "--out", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_dry_run_plans_for_the_processes_the_run_will_have(monkeypatch):
    """--nproc per machine (x nnodes from code), or torchrun's own counts inside a worker;
    WORLD_SIZE alone is not a torchrun worker."""
    import argparse

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert cli._processes(argparse.Namespace(nproc=1)) == (1, 1)
    assert cli._processes(argparse.Namespace(nproc=2, nnodes=2)) == (4, 2)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert cli._processes(argparse.Namespace(nproc=2)) == (2, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cli._processes(argparse.Namespace(nproc=1)) == (8, 4)


def test_resume_with_an_empty_config_is_named(finished, tmp_path, capsys):
    config, done, _ = finished
    out = copy_of(done, tmp_path)
    (out / "config.yaml").write_text("")
    assert run_cli("run", config, "--out", out, "--resume", "--no-progress") == 2
    assert "holds no config (empty)" in capsys.readouterr().err


def test_resume_with_a_damaged_config_or_checkpoint(finished, tmp_path, capsys):
    config, done, _ = finished
    out = copy_of(done, tmp_path)
    good = (out / "config.yaml").read_bytes()
    (out / "config.yaml").write_text("run: [unclosed\n")
    assert run_cli("run", config, "--out", out, "--resume", "--no-progress") == 2
    assert "cannot be read" in capsys.readouterr().err
    (out / "config.yaml").write_bytes(good)
    ckpt = min(out.rglob("checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    assert run_cli("run", config, "--out", out, "--resume", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "checkpoint.pt" in err


def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert run_cli("run", config, "--out", tmp_path / "afile" / "sub") == 2
    assert "cannot create the output directory" in capsys.readouterr().err


def test_default_out_is_runs_slash_experiment(tmp_path, monkeypatch):
    config = write_config(tmp_path / "cfg")
    monkeypatch.chdir(tmp_path)
    crash_after(monkeypatch, days=0)
    with pytest.raises(Crash):
        run_cli("run", config, "--no-progress")
    assert (tmp_path / "runs" / "tiny" / "config.yaml").is_file()


# ---- sweep ----------------------------------------------------------------------------------


def test_sweep_with_a_storage_url(tmp_path, capsys):
    config = write_config(tmp_path, dict(TINY, control=False, sweep=SWEEP))
    out, db = tmp_path / "sweep", tmp_path / "shared" / "studies.db"
    db.parent.mkdir()
    assert run_cli("sweep", config, "--out", out, "--storage", f"sqlite:///{db}",
                   "--no-progress") == 0
    assert db.is_file() and not (out / "sweep.db").exists()
    frame = read_metrics(out / "metrics.parquet")
    assert frame.filter(pl.col("metric") == "sweep/lr").height == 1
    assert set(frame["regime"]) == {"supervised_daily"}
    assert (out / "trials" / "supervised_daily" / "trial=0" / "metrics.parquet").is_file()
    printed = capsys.readouterr().out
    assert "report:" in printed and "trial" in printed and "supervised_daily" in printed
    assert_real_images(pngs(out / "report.html"), at_least=1)


def test_sweep_studies_are_keyed_by_the_config(tmp_path, capsys):
    """Two sweeps with other learning-rate ranges in one storage: the second runs its own trial
    instead of reporting the first one's."""
    db = tmp_path / "shared.db"
    config = write_config(tmp_path, dict(TINY, control=False, sweep=SWEEP))
    assert run_cli("sweep", config, "--out", tmp_path / "a", "--storage", f"sqlite:///{db}",
                   "--no-progress") == 0
    assert run_cli("sweep", config, "--out", tmp_path / "b", "--storage", f"sqlite:///{db}",
                   "--set", "sweep.lr_low=0.05", "--set", "sweep.lr_high=0.1",
                   "--no-progress") == 0
    lrs = read_metrics(tmp_path / "b" / "metrics.parquet").filter(pl.col("metric") == "sweep/lr")
    assert lrs.height == 1 and 0.05 <= lrs["value"][0] <= 0.1


@pytest.mark.parametrize("args, words", [
    (["--storage", "notaurl"], "cannot be opened"),
    (["--set", "sweep.lr_high=.inf"], "lr_high"),
    (["--set", "sweep.regimes=[nope]"], "'nope' is neither"),
])
def test_bad_sweep_input_is_refused_before_the_run_folder(args, words, tmp_path, capsys):
    config = write_config(tmp_path, dict(TINY, control=False, sweep=SWEEP))
    assert run_cli("sweep", config, "--out", tmp_path / "out", *args) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_needs_a_sweep_section(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    assert run_cli("sweep", config, "--out", out) == 2
    assert "no 'sweep' section" in capsys.readouterr().err
    assert not out.exists()
