"""bench/scale.py and bench/train.py run at tiny sizes and print the JSON lines they promise;
the scaling fit and the 30-day projection are checked against hand-computed values."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scale():
    return load("scale")


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_fit_exponent_recovers_a_power_law(scale, power):
    users = [1e4, 3e4, 1e5, 3e5, 1e6]
    slope, r2 = scale.fit_exponent(users, [0.002 * u**power for u in users])
    assert math.isclose(slope, power, abs_tol=1e-9) and math.isclose(r2, 1.0, abs_tol=1e-9)
    noisy = [0.002 * u * f for u, f in zip(users, [1.1, 0.9, 1.05, 0.95, 1.0])]
    slope, r2 = scale.fit_exponent(users, noisy)
    assert 0.9 < slope < 1.1 and r2 < 1.0


def test_the_top_exponent_uses_the_two_largest_sizes_in_any_order(scale, monkeypatch, capsys):
    times = {1000: 0.3 + 1e-5 * 1000, 2000: 0.3 + 1e-5 * 2000, 4000: 0.3 + 1e-5 * 4000}
    monkeypatch.setattr(scale, "spawn", lambda spec, timeout: {"case": "scaling",
                                                                "day_s": times[spec["users"]]})
    fits = {}
    for order in ([1000, 2000, 4000], [4000, 1000, 2000], [2000, 2000, 1000, 4000]):
        scale.main(["--case", "scaling", "--users", *map(str, order), "--days", "1"])
        lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
        fits[tuple(order)] = next(r for r in lines if r.get("case") == "scaling_fit")
    want, _ = scale.fit_exponent([2000, 4000], [times[2000], times[4000]])
    assert all(f["day_time_exponent_top"] == round(want, 3) for f in fits.values())
    assert math.isnan(scale.fit_exponent([1000, 1000], [1.0, 2.0])[0])


def running_with(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_timed_out_figure_leaves_no_process_or_folder(scale, tmp_path):
    """The child, and under torchrun its ranks, run in their own process group: the timeout
    kills all of them (not only torchrun's launcher), and the parent removes the run folder."""
    args = scale.parse(["--nproc", "2", "--tmp", str(tmp_path), "--no-logs", "--threads", "1"])
    spec = {"case": "scaling", "regime": "supervised_daily", "users": 100_000, "items": 1000,
            "days": 50, "device": "cpu", **scale.base_spec(args)}
    record = scale.spawn(spec, timeout=6)  # the ranks are started by then, far from done
    assert record["error"] == "timed out after 6 s"
    assert running_with(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


def test_a_short_full_figure_is_projected_to_its_days(scale):
    record = {"days": 1, "warmup_s": 20.0, "day_s": 80.0, "warmup_cpu_s": 30.0, "day_cpu_s": 150.0}
    out = scale.with_projection(record, 30)
    assert out["projected_wall_s"] == 20.0 + 30 * 80.0 and out["projected_cpu_s"] == 30 + 4500
    assert "projected_wall_s" not in scale.with_projection({**record, "days": 30}, 30)


def test_scale_prints_a_line_per_size_and_the_fitted_exponent(scale, capsys):
    scale.main(["--case", "scaling", "--users", "1000", "2000", "--days", "1", "--no-logs",
                "--no-checkpoint", "--threads", "1", "--case", "gpu",
                "--regimes", "supervised_daily"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    sizes = [r for r in lines if r.get("case") == "scaling"]
    assert [r["users"] for r in sizes] == [1000, 2000]
    for r in sizes:
        assert "error" not in r, r
        assert r["day_s"] > 0 and r["peak_rss_gib"] > 0 and r["requests_per_day"] > 0
        assert r["gomp_spincount"] and r["omp_wait_policy"]
        # one day: its phases add up to it (no logs were asked for: no write_logs phase)
        assert set(r["phase_s"]) == {"serve", "simulate", "train", "probe", "checkpoint",
                                     "other"}
        assert sum(r["phase_s"].values()) == pytest.approx(r["day_s"], abs=0.01)
        assert min(r["phase_s"][k] for k in ("serve", "simulate", "train")) > 0
    fit = next(r for r in lines if r.get("case") == "scaling_fit")
    assert any("exponent" in k for k in fit) and fit["users"] == [1000, 2000]
    gpu = next(r for r in lines if r.get("case") == "gpu")
    if not torch.cuda.is_available():
        assert "no CUDA" in gpu["skipped"]


def test_train_bench_prints_both_regimes(capsys):
    load("train").main(["--quick", "--device", "cpu", "--threads", "1"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert {r["regime"] for r in lines} == {"supervised_daily", "grpo"}
    for r in lines:
        speed = r.get("impressions_per_s") or r.get("requests_per_s")
        assert speed and speed > 0 and r["device"] == "cpu"


def test_phase_clock_counts_each_second_once_for_the_innermost_phase(scale, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(scale.time, "perf_counter", lambda: now[0])
    clock = scale.PhaseClock()

    def wait(seconds):
        now[0] += seconds

    serve = clock.wrap("serve", wait, inside="simulate")

    def day():
        wait(1.0)
        serve(2.0)  # inside simulate: its own phase
        wait(3.0)

    clock.wrap("simulate", day)()
    wait(0.5)  # between phases: in no phase
    clock.wrap("probe", serve)(4.0)  # serve outside simulate: counts for the probe
    assert clock.take() == {"simulate": 4.0, "serve": 2.0, "probe": 4.0}
    assert clock.take() == {}
    # the day's wall time not in any phase is "other"; medians over days per phase
    days = [{"serve": 2.0, "train": 5.0}, {"serve": 4.0}, {"serve": 3.0, "train": 1.0}]
    out = scale.phase_medians(days, [8.0, 5.0, 4.0])
    assert out == {"serve": 3.0, "train": 1.0, "other": 1.0}  # other: 8-7, 5-4, 4-4


def test_a_failed_figure_names_how_it_ended_and_the_exception(scale):
    pydantic = ("Traceback (most recent call last):\n  File \"x\", line 1\n"
                "pydantic_core._pydantic_core.ValidationError: 1 validation error for Config\n"
                "days\n  Input should be greater than 0\n"
                "    For further information visit https://errors.pydantic.dev/2/v\n")
    rec = scale.failure(1, pydantic)
    assert rec["error"] == ("exit status 1: pydantic_core._pydantic_core.ValidationError: "
                            "1 validation error for Config")
    assert rec["stderr_tail"][-1].strip().startswith("For further information")
    torchrun = ("[rank1]: Traceback (most recent call last):\n[rank1]: RuntimeError: boom\n"
                "=====\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert scale.failure(1, torchrun)["error"] == "exit status 1: [rank1]: RuntimeError: boom"
    assert scale.failure(-9, "")["error"] == "killed by SIGKILL"  # e.g. the OOM killer
    assert scale.failure(0, "", "printed no record")["error"] == "printed no record"


@pytest.mark.parametrize("script, args", [
    ("scale", ["--case", "scaling", "--days", "0"]),
    ("scale", ["--nproc", "0"]),
    ("simulator", ["--days", "0"]),
    ("train", ["--steps", "0"]),
])
def test_sizes_below_one_are_refused_not_replaced(script, args, capsys):
    mod = load(script)
    entry = getattr(mod, "parse", None) or getattr(mod, "parse_args", None) or mod.main
    with pytest.raises(SystemExit) as exit_:
        entry(args)
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_explicit_sizes_win_over_quick():
    args = load("train").parse_args(["--quick", "--users", "50000", "--steps", "20"])
    assert (args.users, args.items, args.steps, args.warmup) == (50_000, 2_000, 20, 2)
    args = load("train").parse_args([])
    assert (args.users, args.items, args.steps, args.warmup) == (1_000_000, 100_000, 50, 5)


def test_a_records_rates_follow_from_its_own_raw_fields(scale, capsys):
    """3 days (so a median differs from a mean): day_s is the median day, the rates divide the
    experiment days' requests by the experiment days' wall time, impressions are K = 10 per
    request (the default latent world), and the RSS total sums the ranks."""
    import statistics

    scale.main(["--case", "scaling", "--users", "1000", "--days", "3", "--no-logs",
                "--threads", "1"])
    r = next(json.loads(x) for x in capsys.readouterr().out.splitlines()
             if json.loads(x).get("case") == "scaling")
    assert "error" not in r, r
    days = r["day_s_all"]
    assert len(days) == 3 and r["day_s"] == pytest.approx(statistics.median(days), abs=1e-3)
    # The record's fields are rounded (each day to 1 ms, the mean requests a day to 1), so the
    # rate recomputed from them agrees up to that rounding (short days: a few tenths of a %).
    rounding = len(days) * 5e-4 / sum(days) + 0.5 / r["requests_per_day"] + 1e-4
    assert r["requests_per_s"] == pytest.approx(3 * r["requests_per_day"] / sum(days),
                                                rel=rounding)
    assert r["impressions_per_s"] == pytest.approx(10 * r["requests_per_s"], rel=1e-3)
    assert r["peak_rss_gib_total"] == pytest.approx(sum(r["peak_rss_gib_per_rank"]), abs=1e-3)
    assert r["wall_s"] >= r["warmup_s"] + sum(days) - 0.05
