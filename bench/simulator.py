"""Simulator throughput: user-steps per second, one JSON line per (world, device, policy).

A user-step is one request served end to end: candidate retrieval (C items), the policy's slate,
the choice model's clicks and true probabilities, the state updates (history, popularity,
interest evolution, ...) and the day's log; the end-of-day dynamics are included in the time.

Worlds: the RecSim-equivalent preset (one-hot topics, quality, MNL with no-click, C=100, K=10;
compare with RecSim's interest-evolution environment, 1,300-1,600 steps/s on one core) and the
default latent-factor world, at 10^5 users, on CPU and on CUDA when present.

Policies: ``fixed_positions`` (candidate positions 0..K-1: measures the simulator alone; with the
RecSim preset's uniform retrieval these are K random distinct items) and ``uniform_random``
(Gumbel-style top-K of C uniform keys, the probe policy: includes a policy's cost).

    python bench/simulator.py                  # 10^5 users, 3 timed days, all devices
    python bench/simulator.py --quick          # 2*10^4 users, 2 timed days

Process settings (the 2-core VM is shared, so both matter; the JSON records them):

- Allocator: a day's log is tens of MB of fresh memory, and first-touching fresh pages dominated
  the profile (about 0.9 ns per byte). On Linux the script re-executes itself with
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35 then backs large allocations with
  transparent huge pages; older glibc ignores it).
- OpenMP: with other processes on the cores, spinning worker threads made 2 threads 5-10x slower
  than 1; ``OMP_WAIT_POLICY=PASSIVE`` is set unless the environment already sets a policy.

``--no-reexec`` keeps the environment as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulators import presets
from simulators.day import simulate_day
from simulators.policies import fixed_positions_policy, uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world

_HUGETLB = "glibc.malloc.hugetlb=1"
WORLDS = {"recsim_equivalent": presets.recsim_equivalent, "default_latent": presets.default_latent}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(world_name: str, device: str, policy_name: str, users: int, days: int,
            batch_size: int, seed: int = 0) -> dict:
    """Time ``days`` simulated days after one warm-up day; return the JSON record."""
    cfg = WORLDS[world_name]({"users": {"n_users": users}, "device": device})
    gen = make_generator(seed, device)
    world = make_world(cfg, gen)
    if policy_name == "fixed_positions":
        policy = fixed_positions_policy(cfg.slate_size)
    else:
        policy = uniform_random_policy(cfg.slate_size, make_generator(seed + 1, device))
    simulate_day(world, policy, gen, batch_size=batch_size)  # warm-up
    _sync(device)
    steps, clicks = 0, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(days):
        log = simulate_day(world, policy, gen, batch_size=batch_size)
        steps += len(log)
        clicks += float(log.clicks.sum())
    _sync(device)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # all threads of this process, user + system
    return {
        "bench": "simulator", "world": world_name, "device": device, "policy": policy_name,
        "users": users, "candidates": cfg.candidates.n_candidates, "slate": cfg.slate_size,
        "choice": cfg.choice.model, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "days": days, "user_steps": steps, "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "user_steps_per_s": round(steps / seconds, 1), "clicks_per_step": round(clicks / steps, 4),
        "malloc_hugetlb": _HUGETLB in os.environ.get("GLIBC_TUNABLES", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000, help="users in the world (default 1e5)")
    p.add_argument("--days", type=int, default=3, help="timed days after one warm-up day")
    p.add_argument("--batch-size", type=int, default=8192, help="requests per served batch")
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda when present)")
    p.add_argument("--world", default="all", choices=["all", *WORLDS])
    p.add_argument("--policy", default="all", choices=["all", "fixed_positions", "uniform_random"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="2*10^4 users, 2 timed days")
    p.add_argument("--no-reexec", action="store_true",
                   help=f"keep the environment (no GLIBC_TUNABLES={_HUGETLB}, no "
                        "OMP_WAIT_POLICY=PASSIVE)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.users, args.days = 20_000, 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if not d.startswith("cuda") or torch.cuda.is_available()]
    worlds = list(WORLDS) if args.world == "all" else [args.world]
    policies = ["fixed_positions", "uniform_random"] if args.policy == "all" else [args.policy]
    for device in devices:
        for world in worlds:
            for policy in policies:
                rec = measure(world, device, policy, args.users, args.days, args.batch_size)
                print(json.dumps(rec), flush=True)


def _reexec_with_settings() -> None:
    """Re-run this script with the process settings of the module docstring, once."""
    if sys.platform != "linux" or "--no-reexec" in sys.argv or os.environ.get("_SIM_BENCH_REEXEC"):
        return
    env = dict(os.environ, _SIM_BENCH_REEXEC="1")
    tun = env.get("GLIBC_TUNABLES", "")
    if _HUGETLB not in tun:
        env["GLIBC_TUNABLES"] = f"{tun}:{_HUGETLB}" if tun else _HUGETLB
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    _reexec_with_settings()
    main()
