"""Impression logs: frame schema, Parquet partitions by day, atomic writes."""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from simulators import presets
from simulators.day import simulate_day
from simulators.logs import SCHEMA, day_dir, day_log_to_frame, read_logs, write_day
from simulators.policies import uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world

ROOT = Path(__file__).resolve().parents[2]


def two_days():
    w = make_world(presets.tiny(), make_generator(0))
    pol = uniform_random_policy(5, make_generator(1))
    gen = make_generator(2)
    return [simulate_day(w, pol, gen) for _ in range(2)]


def test_frame_has_one_row_per_impression():
    log = two_days()[0]
    f = day_log_to_frame(log)
    assert dict(zip(f.columns, f.dtypes)) == SCHEMA
    assert f.height == len(log) * 5
    r = 3
    rows = f.filter(pl.col("request") == r).sort("position")
    assert rows["position"].to_list() == [0, 1, 2, 3, 4]
    assert rows["item"].to_list() == log.items[r].tolist()
    assert rows["click"].to_list() == log.clicks[r].int().tolist()
    assert rows["user"].unique().to_list() == [int(log.users[r])]
    assert rows["true_prob"].to_list() == pytest.approx(log.true_probs[r].tolist())
    lp = float(log.log_propensity[r])
    assert rows["propensity"].to_list() == pytest.approx([math.exp(lp)] * 5)


def test_write_and_read_back_by_day(tmp_path):
    logs = two_days()
    frames = [day_log_to_frame(g) for g in logs]
    paths = [write_day(f, tmp_path) for f in frames]
    assert paths[1] == tmp_path / "day=0001" / "part-0.parquet" == day_dir(tmp_path, 1) / \
        "part-0.parquet"
    both = read_logs(tmp_path)
    assert both.equals(pl.concat(frames).sort(["day", "request", "position"]))
    assert read_logs(tmp_path, days=[1]).equals(frames[1].sort(["day", "request", "position"]))
    assert read_logs(tmp_path / "nothing").height == 0


def test_write_day_refuses_mixed_days_and_wrong_columns(tmp_path):
    f = pl.concat([day_log_to_frame(g) for g in two_days()])
    with pytest.raises(ValueError, match="one day per call"):
        write_day(f, tmp_path)
    with pytest.raises(ValueError, match="expects the columns"):
        write_day(f.drop("click"), tmp_path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    f = day_log_to_frame(two_days()[0])

    def boom(self, target, *a, **k):
        target.write(b"PAR1 half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_day(f, tmp_path)
    assert list(day_dir(tmp_path, 0).iterdir()) == []


def test_a_run_killed_mid_write_leaves_no_half_file(tmp_path):
    """A child process is SIGKILLed in the middle of writing day 0 over an existing file: the old
    file stays intact, no half file is visible and read_logs still works."""
    first = day_log_to_frame(two_days()[0])
    write_day(first, tmp_path)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import polars as pl
        from simulators.logs import read_logs, write_day
        frame = read_logs({str(tmp_path)!r})
        frame = frame.with_columns(pl.col("click") * 0)
        def write_half_then_die(self, target, *a, **k):
            target.write(b"PAR1 half a file")
            target.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        pl.DataFrame.write_parquet = write_half_then_die
        write_day(frame, {str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    names = sorted(p.name for p in day_dir(tmp_path, 0).iterdir())
    assert "part-0.parquet" in names and all(
        n == "part-0.parquet" or n.startswith(".") for n in names)  # only a hidden temp file
    assert read_logs(tmp_path).equals(first.sort(["day", "request", "position"]))
