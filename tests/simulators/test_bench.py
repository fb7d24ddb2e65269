"""bench/simulator.py runs at a tiny size and prints one JSON line per measurement."""
import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "simulator.py"


def test_bench_prints_json_lines(capsys):
    spec = importlib.util.spec_from_file_location("bench_simulator", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    mod.main(["--users", "300", "--days", "2", "--warmup-days", "1", "--device", "cpu",
              "--batch-size", "128"])
    assert torch.get_num_threads() == threads  # --threads 1 is undone
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert {(r["world"], r["policy"]) for r in lines} == {
        (w, p) for w in ("recsim_equivalent", "default_latent")
        for p in ("fixed_positions", "uniform_random")}
    for r in lines:
        assert r["user_steps"] > 0 and r["user_steps_per_s"] > 0 and r["device"] == "cpu"
        assert r["warmup_days"] == 1 and len(r["warmup_seconds"]) == 1
        assert r["days"] == 2 and len(r["day_seconds"]) == 2 and r["threads"] == 1
        assert isinstance(r["prefetch"], bool)
