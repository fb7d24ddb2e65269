"""The HTML report renders from the long schema alone: self-contained, PNGs that open, skips."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from recsys_onpolicy.report import report_run_dir, write_report
from recsys_onpolicy.results import metric_rows, to_frame, write_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_SECTIONS = ["summary", "table", "curves", "forgetting", "auc", "kl", "feedback", "drift",
                "sweep", "other", "config"]


def full_frame() -> pl.DataFrame:
    """Every kind of metric: 2 recsys regimes x 2 seeds x 5 days, an LLM toy, a 3-trial sweep."""
    out, rng = [], np.random.default_rng(0)
    for regime, rate in (("supervised_daily", 0.05), ("grpo", 0.01)):
        for seed in (0, 1):
            kw = {"domain": "recsys", "experiment": "cohort_removal", "regime": regime,
                  "seed": seed}
            for day in range(5):
                forgot = rate * max(day - 2, 0) + 0.002 * seed
                out += metric_rows(**kw, step=day, values={
                    "target/gain": 0.02 * day, "probe/drop": forgot, "feedback/coverage": 0.9,
                    "drift/share_unchanged": 1 - 0.1 * day, "train/loss": 0.6 + rng.normal(0, .01)})
                out += metric_rows(**kw, step=day, group="train",
                                   values={"probe/kl_to_base": 2 * forgot + 0.001 * seed})
                for c in ("c0", "c1"):
                    out += metric_rows(**kw, step=day, group=c, values={
                        "probe/auc": 0.8 - (forgot if c == "c0" else 0), "probe/auc_oracle": 0.9})
                if day >= 2:
                    out += metric_rows(**kw, step=day, group="c0", values={
                        "probe/forgetting": forgot, "probe/forgetting_vs_control": forgot / 2})
    for seed in (0, 1):
        for step in (0, 100, 200):
            out += metric_rows(domain="llm", experiment="mixture_toy", regime="forward_kl",
                               seed=seed, step=step, values={"target/gain": step / 200,
                                                             "probe/drop": 0.001 * step + seed})
    for n, lr in enumerate((1e-3, 1e-2, 1e-1)):
        out += metric_rows(domain="recsys", experiment="lr_sweep", regime="grpo", seed=n, step=4,
                           values={"sweep/lr": lr, "target/gain": n, "probe/drop": lr})
    return to_frame(out)


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', html, flags=re.DOTALL))


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert write_report(full_frame(), path, "demo <run>", config_text="lr: 0.1\nnote: <b>") == path
    return path.read_text(encoding="utf-8")


def test_report_has_every_section_in_order(full_report):
    assert list(sections(full_report)) == ALL_SECTIONS
    assert "Skipped" not in full_report and "Not drawn" not in full_report


def test_report_is_self_contained(full_report):
    srcs = re.findall(r'src="([^"]*)"', full_report)
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=\"?https?:", full_report)
    assert "<link" not in full_report and "<script" not in full_report


def test_embedded_pngs_decode_to_real_images(full_report):
    for png in images(full_report):
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            assert img.width >= 400 and img.height >= 250
            assert np.unique(np.asarray(img.convert("L"))).size > 10  # not a blank canvas


def test_table_config_and_title_are_in_the_page_and_escaped(full_report):
    table = sections(full_report)["table"]
    for regime in ("supervised_daily", "grpo", "forward_kl"):
        assert f"<td>{regime}</td>" in table
    assert "KL to base" in table and "forgetting vs control" in table
    assert "lr_sweep" not in table  # sweep trials are not seeds: no row of the table
    assert "<title>demo &lt;run&gt;</title>" in full_report
    assert "<pre>lr: 0.1\nnote: &lt;b&gt;</pre>" in sections(full_report)["config"]


def test_missing_metrics_skip_their_sections_with_a_note(tmp_path):
    frame = to_frame(r for s in range(3) for r in metric_rows(
        domain="llm", experiment="toy", regime="rl", seed=0, step=s,
        values={"target/gain": s / 10, "probe/drop": 0.0}))
    html = write_report(frame, tmp_path / "r.html", "toy").read_text()
    got = sections(html)
    assert list(got) == ALL_SECTIONS and len(images(html)) == 1  # gain/drop curves only
    for skipped in ("forgetting", "auc", "kl", "feedback", "drift", "sweep", "other", "config"):
        assert got[skipped].count('class="note">Skipped:') == 1, skipped
    assert "no probe/forgetting rows" in got["forgetting"]


def test_only_sweep_trials_render_the_frontier_and_kl_scatter(tmp_path):
    frame = to_frame(r for n, lr in enumerate((1e-3, 1e-2, 1e-1)) for r in metric_rows(
        domain="recsys", experiment="lr_sweep", regime="grpo", seed=n, step=4,
        values={"sweep/lr": lr, "target/gain": n, "probe/drop": lr, "probe/kl_to_base": 2 * lr}))
    got = sections(write_report(frame, tmp_path / "r.html", "sweep").read_text())
    assert "only sweep trials" in got["table"]
    assert all(len(images(got[s])) == 1 for s in ("sweep", "kl"))  # trials are points of both
    assert "Skipped" in got["curves"]  # a trial is not a seed: no curves averaged over trials


def test_empty_or_malformed_frames_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report(to_frame([]), tmp_path / "r.html", "x")
    with pytest.raises(ValueError, match="schema"):
        write_report(pl.DataFrame({"metric": ["a"]}), tmp_path / "r.html", "x")
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_report_run_dir_reads_metrics_and_config(tmp_path):
    frame = to_frame(metric_rows(domain="recsys", experiment="quickstart", regime="grpo",
                                 seed=0, step=1, values={"target/gain": 0.1, "probe/drop": 0.0}))
    write_metrics(frame, tmp_path / "metrics.parquet")
    (tmp_path / "config.yaml").write_text("experiment: quickstart\n")
    (tmp_path / "report.html").write_text("old")  # replaced atomically
    path = report_run_dir(tmp_path)
    assert path == tmp_path / "report.html"
    html = path.read_text()
    assert "experiment: quickstart" in sections(html)["config"] and "quickstart" in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.parquet",
                                                          "report.html"]


def test_report_run_dir_without_metrics_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.parquet"):
        report_run_dir(tmp_path)
    assert not Path(tmp_path / "report.html").exists()
