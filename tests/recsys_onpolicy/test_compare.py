"""The cross-domain view: loading several runs, side-by-side table, normalised progress, the page."""
from __future__ import annotations

import base64
import re

import polars as pl
import pytest
import yaml

from recsys_onpolicy import compare
from recsys_onpolicy.results import metric_rows, to_frame, write_metrics


def run_frame(domain: str, experiment: str, regimes: dict[str, float], last_step: int,
              seeds=(0, 1, 2)) -> pl.DataFrame:
    """Drop grows linearly to ``regimes[regime] + 0.01 * seed`` at ``last_step``; KL = 2 drop."""
    out = []
    for regime, final in regimes.items():
        for seed in seeds:
            for step in (0, last_step // 2, last_step):
                drop = (final + 0.01 * seed) * step / last_step
                group = "train" if domain == "recsys" else None
                out += metric_rows(domain=domain, experiment=experiment, regime=regime, seed=seed,
                                   step=step, values={"target/gain": 0.1 * step / last_step,
                                                      "probe/drop": drop})
                out += metric_rows(domain=domain, experiment=experiment, regime=regime, seed=seed,
                                   step=step, values={"probe/kl_to_base": 2 * drop}, group=group)
    return to_frame(out)


@pytest.fixture
def run_dirs(tmp_path):
    recsys = run_frame("recsys", "cohort_removal", {"supervised_daily": 0.3, "grpo": 0.1}, 10)
    llm = run_frame("llm", "mixture_toy", {"teacher_sft": 0.5, "grpo": 0.05}, 200)
    dirs = [tmp_path / "recsys_run", tmp_path / "llm_run"]
    for d, f in zip(dirs, (recsys, llm)):
        write_metrics(f, d / "metrics.parquet")
    return dirs


def test_compare_runs_concatenates_run_dirs_and_frames(run_dirs):
    frame = compare.compare_runs(run_dirs)
    assert frame.height == 2 * 2 * 3 * 3 * 3  # domains x regimes x seeds x steps x metrics
    assert sorted(frame["domain"].unique().to_list()) == ["llm", "recsys"]
    extra = run_frame("llm", "other_toy", {"grpo": 0.1}, 5, seeds=(0,))
    assert compare.compare_runs(run_dirs + [extra]).height == frame.height + extra.height


def test_compare_runs_rejects_overlaps_bad_schemas_and_missing_dirs(run_dirs, tmp_path):
    with pytest.raises(ValueError, match="is in both"):
        compare.compare_runs([run_dirs[0], run_dirs[0]])
    bad = compare.compare_runs(run_dirs[:1]).with_columns(pl.col("seed").cast(pl.Utf8))
    with pytest.raises(ValueError, match="schema"):
        compare.compare_runs([bad])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare.compare_runs([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="metrics.parquet"):
        compare.compare_runs([tmp_path])
    with pytest.raises(ValueError, match="at least one"):
        compare.compare_runs([])
    empty = tmp_path / "empty"
    write_metrics(to_frame([]), empty / "metrics.parquet")
    with pytest.raises(ValueError, match=f"{empty} holds no metric rows"):
        compare.compare_runs([run_dirs[0], empty])
    # the same experiment from two sources without configs showing it is one experiment
    other_seeds = compare.compare_runs(run_dirs[:1]).with_columns(pl.col("seed") + 10)
    with pytest.raises(ValueError, match="pooled as seeds"):
        compare.compare_runs([run_dirs[0], other_seeds])


def test_one_experiment_from_two_folders_is_pooled_only_when_configs_agree_but_seeds(tmp_path):
    """Seeds split across machines pool (a seed key at any depth is ignored, e.g. the toy's
    mixture_toy.seed); another setting is refused, with advice an LLM experiment can follow."""
    def folder(name: str, seed: int, lr: float):
        d = tmp_path / name
        write_metrics(run_frame("llm", "mixture_toy", {"grpo": 0.05}, 10, seeds=(seed,)),
                      d / "metrics.parquet")
        (d / "config.yaml").write_text(yaml.safe_dump({
            "domain": "llm", "experiment": "mixture_toy", "jobs": seed + 1,
            "mixture_toy": {"seed": seed, "lr": lr}}), encoding="utf-8")
        return d
    a, b, c = folder("a", 0, 0.1), folder("b", 1, 0.1), folder("c", 2, 0.5)
    assert sorted(compare.compare_runs([a, b])["seed"].unique().to_list()) == [0, 1]
    with pytest.raises(ValueError, match="differ beyond the seeds") as err:
        compare.compare_runs([a, c])
    assert "compare them separately" in str(err.value) and "--set" not in str(err.value)


def test_normalised_progress_divides_by_each_runs_last_step():
    out = []
    for seed, last in ((0, 10), (1, 200), (2, 0)):
        for step in sorted({0, last // 2, last}):
            out += metric_rows(domain="recsys", experiment="e", regime="grpo", seed=seed,
                               step=step, values={"probe/drop": 1.0})
    got = compare.normalised_progress(to_frame(out)).sort("seed", "step")
    assert got["step"].to_list() == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0]


def test_side_by_side_table_has_a_gain_and_drop_column_per_domain(run_dirs):
    table = compare.side_by_side_table(compare.compare_runs(run_dirs))
    assert table.columns == ["regime", "llm/mixture_toy gain", "llm/mixture_toy drop",
                             "recsys/cohort_removal gain", "recsys/cohort_removal drop"]
    assert table["regime"].to_list() == ["grpo", "supervised_daily", "teacher_sft"]
    grpo, sup, teacher = table.iter_rows(named=True)
    assert grpo["recsys/cohort_removal drop"].startswith("0.11 [")  # mean of 0.10, 0.11, 0.12
    assert sup["llm/mixture_toy drop"] == "-" and teacher["recsys/cohort_removal gain"] == "-"


def test_progress_curves_share_the_normalised_axis_per_domain(run_dirs):
    fig = compare.progress_curves(compare.compare_runs(run_dirs))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["llm: probe/drop", "recsys: probe/drop"]
    for ax in axes:
        lines = [ln for ln in ax.get_lines() if ln.get_label() in ("grpo", "teacher_sft",
                                                                    "supervised_daily")]
        assert len(lines) == 2 and all(list(ln.get_xdata()) == [0, 0.5, 1] for ln in lines)
    colour = {ln.get_label(): ln.get_color() for ax in axes for ln in ax.get_lines()}
    assert len({colour["grpo"], colour["teacher_sft"], colour["supervised_daily"]}) == 3


def test_write_comparison_is_one_self_contained_page(run_dirs, tmp_path):
    out = compare.write_comparison(run_dirs, tmp_path / "compare.html")
    html = out.read_text()
    assert re.findall(r'<section id="(\w+)">', html) == ["summary", "table", "bars", "kl",
                                                         "progress"]
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 3 and len(re.findall(r'src="', html)) == 3
    assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "<td>recsys/cohort_removal drop</td>" not in html  # headers are <th>
    assert "<th>recsys/cohort_removal drop</th>" in html
