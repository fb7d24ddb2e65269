"""Simulator throughput: user-steps per second, one JSON line per (world, device, policy).

A user-step is one request served end to end: candidate retrieval (C items), the policy's slate,
the choice model's clicks and true probabilities, the state updates (history, popularity,
interest evolution, ...) and the day's log; the end-of-day dynamics are included in the time.

Worlds: the RecSim-equivalent preset (one-hot topics, quality, RecSim's proportional choice
with a no-click option, C=100, K=10;
compare with RecSim's interest-evolution environment, 1,300-1,600 steps/s on one core) and the
default latent-factor world, at 10^5 users, on CPU and on CUDA when present.

Policies: ``fixed_positions`` (candidate positions 0..K-1: measures the simulator alone; with the
RecSim preset's uniform retrieval these are K random distinct items) and ``uniform_random``
(Gumbel-style top-K of C uniform keys, the probe policy: includes a policy's cost).

    python bench/simulator.py                  # 10^5 users, 2 warm-up + 5 timed days, all devices
    python bench/simulator.py --quick          # 2*10^4 users, 1 warm-up + 2 timed days

What is timed: the steady state of a long run (the experiments run 30-60 days). The first
``--warmup-days`` (default 2) are run untimed and reported separately (``warmup_seconds``): each
of the first two days writes its log into fresh memory (about 120 MB at 10^5 users), and on the
2-core VM first-touching 120 MB of new huge pages took about 0.28 s (0.05 s with 4 KiB pages);
the caller still holds day 0's log while day 1 runs, so only from day 2 on does a day reuse an
earlier day's buffers (see simulators/buffers.py). The warm-up holds the last log like the timed
loop, so both buffer sets exist before timing starts. ``day_seconds`` lists every timed day;
``user_steps_per_s`` is the timed steps over the timed wall time.

Process settings (the 2-core VM is shared, so all matter; the JSON records them):

- Threads: ``--threads 1`` (default) torch intra-op thread; the simulator prepares the next
  batches' requests in a second thread (``prefetch``, on by default on CPU with 2+ cores), so the
  two cores are used by the two pipeline stages. Measured at B=8192: 2 intra-op threads were
  slower than 1 (short ops, OpenMP wake-ups), with or without prefetch.
- Allocator: on Linux the script re-executes itself with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
  (glibc >= 2.35 then backs large allocations with transparent huge pages; older glibc ignores it).
- OpenMP: with other processes on the cores, spinning worker threads made 2 threads 5-10x slower
  than 1; ``OMP_WAIT_POLICY=PASSIVE`` is set unless the environment already sets a policy.

``--no-reexec`` keeps the environment as it is. ``cpu_seconds`` (process time, all threads) next
to ``seconds`` (wall) shows whether the machine was busy: on a shared machine compare both.
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

from recsys_onpolicy.cli import positive
from simulators import presets
from simulators.day import _prefetch_default, simulate_day
from simulators.policies import fixed_positions_policy, uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world

_HUGETLB = "glibc.malloc.hugetlb=1"
WORLDS = {"recsim_equivalent": presets.recsim_equivalent, "default_latent": presets.default_latent}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(world_name: str, device: str, policy_name: str, users: int, days: int,
            batch_size: int, seed: int = 0, warmup_days: int = 2,
            prefetch: bool | None = None) -> dict:
    """Time ``days`` simulated days after ``warmup_days`` untimed ones; return the JSON record."""
    cfg = WORLDS[world_name]({"users": {"n_users": users}, "device": device})
    gen = make_generator(seed, device)
    world = make_world(cfg, gen)
    if policy_name == "fixed_positions":
        policy = fixed_positions_policy(cfg.slate_size)
    else:
        policy = uniform_random_policy(cfg.slate_size, make_generator(seed + 1, device))
    warmup_seconds, log = [], None
    for _ in range(warmup_days):  # holding the last log, like the timed loop (and a real run)
        t0 = time.perf_counter()
        log = simulate_day(world, policy, gen, batch_size=batch_size, prefetch=prefetch)
        _sync(device)
        warmup_seconds.append(round(time.perf_counter() - t0, 4))
    steps, clicks, day_seconds, prefetched = 0, 0.0, [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(days):
        t_day = time.perf_counter()
        log = simulate_day(world, policy, gen, batch_size=batch_size, prefetch=prefetch)
        # what simulate_day decided: its default looks at the day's batches of requests
        prefetched.append(_prefetch_default(world, -(-len(log) // batch_size))
                          if prefetch is None else prefetch)
        steps += len(log)
        clicks += float(log.clicks.sum())
        _sync(device)
        day_seconds.append(round(time.perf_counter() - t_day, 4))
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # all threads of this process, user + system
    return {
        "bench": "simulator", "world": world_name, "device": device, "policy": policy_name,
        "users": users, "candidates": cfg.candidates.n_candidates, "slate": cfg.slate_size,
        "choice": cfg.choice.model, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "prefetch": all(prefetched), "prefetch_days": sum(prefetched),
        "warmup_days": warmup_days, "warmup_seconds": warmup_seconds,
        "days": days, "day_seconds": day_seconds, "user_steps": steps,
        "seconds": round(seconds, 4), "cpu_seconds": round(cpu_seconds, 4),
        "user_steps_per_s": round(steps / seconds, 1), "clicks_per_step": round(clicks / steps, 4),
        "malloc_hugetlb": _HUGETLB in os.environ.get("GLIBC_TUNABLES", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


DEFAULT = {"users": 100_000, "days": 5, "warmup_days": 2}
QUICK = {"users": 20_000, "days": 2, "warmup_days": 1}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=positive, help="users in the world (default 1e5; --quick 2e4)")
    p.add_argument("--days", type=positive, help="timed days (default 5; --quick 2)")
    p.add_argument("--warmup-days", type=int,
                   help="untimed days before them (default 2, --quick 1: see the module docstring)")
    p.add_argument("--batch-size", type=positive, default=8192, help="requests per served batch")
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda when present)")
    p.add_argument("--world", default="all", choices=["all", *WORLDS])
    p.add_argument("--policy", default="all", choices=["all", "fixed_positions", "uniform_random"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1; 0: torch's default)")
    p.add_argument("--prefetch", default="auto", choices=["auto", "on", "off"],
                   help="requests prepared in a second thread (auto: the simulator's default)")
    p.add_argument("--quick", action="store_true",
                   help="2*10^4 users, 1 warm-up + 2 timed days (explicit sizes still win)")
    p.add_argument("--no-reexec", action="store_true",
                   help=f"keep the environment (no GLIBC_TUNABLES={_HUGETLB}, no "
                        "OMP_WAIT_POLICY=PASSIVE)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    for key, value in sizes.items():  # what the command line gave wins over both
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup_days < 0:
        p.error(f"argument --warmup-days: {args.warmup_days}: must be >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"argument --device: {args.device} but no CUDA device is available; use cpu "
                "(or all: cpu, plus cuda when present)")
    prefetch = {"auto": None, "on": True, "off": False}[args.prefetch]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if not d.startswith("cuda") or torch.cuda.is_available()]
    worlds = list(WORLDS) if args.world == "all" else [args.world]
    policies = ["fixed_positions", "uniform_random"] if args.policy == "all" else [args.policy]
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        for device in devices:
            for world in worlds:
                for policy in policies:
                    rec = measure(world, device, policy, args.users, args.days, args.batch_size,
                                  warmup_days=args.warmup_days, prefetch=prefetch)
                    print(json.dumps(rec), flush=True)
    finally:  # main() is also called in-process (tests)
        torch.set_num_threads(threads_before)


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
