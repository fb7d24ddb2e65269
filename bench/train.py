"""Training throughput of the scorer: one JSON line per figure.

``supervised_daily``: impressions/s of BCE training on logged impressions. A batch is R requests
of K shown items each (R * K ~ ``--batch-impressions``), with a click history of H items (-1
padded, random lengths); the model scores the K shown items and takes one fused-TBE + Adam step.
Ids are synthetic and uniform (a worst case for the TBE's caches: real traffic is skewed).
Batches are generated before timing and cycled, so only training is measured.

``grpo``: requests/s of the GRPO update (``recsys_onpolicy.regimes.policy_gradient.update``):
score C candidates per request (B = ``--grpo-requests``), sample G Plackett-Luce slates of K,
let the simulator answer them (a world with the model's users and items), group-normalised
advantages, one fused-TBE + Adam step. Requests are generated before timing and cycled.

Example::

    python bench/train.py                 # 1M users x 100k items, D = 32
    python bench/train.py --quick         # small, seconds
    python bench/train.py --regime grpo   # one figure only

Prints e.g. ``{"bench": "train", "regime": "supervised_daily", "device": "cpu", "users":
1000000, "items": 100000, "dim": 32, "impressions_per_s": ...}``, with the 1-minute load
average: numbers from a shared machine are noisy, report the load alongside them. On a CPU that
other processes keep busy, torch's intra-op threads wait on each other: ``--threads 1`` (or
``OMP_WAIT_POLICY=PASSIVE``) is then much faster than the default of one thread per core.
For numbers comparable with ``bench/scale.py`` run with its process settings
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 OMP_WAIT_POLICY=PASSIVE``): without huge pages a GRPO
update took ~94 ms instead of ~78 ms (6,800 page faults per update; 1 thread, shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from recsys_onpolicy.cli import positive
from recsys_onpolicy.model import ModelConfig, TrainableScorer, resolve_device
from recsys_onpolicy.objectives import pointwise_bce


def synthetic_batches(
    n: int, requests: int, k: int, history: int, users: int, items: int, topics: int,
    gen: torch.Generator,
) -> list[tuple[torch.Tensor, ...]]:
    """``n`` batches of (users (R,), history (R,H), items (R,K), topics (R,K), clicks (R,K))."""
    out = []
    for _ in range(n):
        u = torch.randint(0, users, (requests,), generator=gen)
        hist = torch.randint(0, items, (requests, history), generator=gen)
        lengths = torch.randint(0, history + 1, (requests, 1), generator=gen)
        hist[torch.arange(history)[None, :] >= lengths] = -1  # (R, H) -1 padded
        shown = torch.randint(0, items, (requests, k), generator=gen)
        topic = torch.randint(0, topics, (requests, k), generator=gen)
        clicks = (torch.rand(requests, k, generator=gen) < 0.1).float()
        out.append((u, hist, shown, topic, clicks))
    return out


def bench_supervised(args: argparse.Namespace) -> dict:
    """Impressions/s of the ``supervised_daily`` update (pointwise BCE on shown items)."""
    cfg = ModelConfig(embedding_dim=args.dim, device=args.device, head_dtype=args.head_dtype)
    device = resolve_device(cfg.device)
    gen = torch.Generator().manual_seed(0)
    model = TrainableScorer(cfg, args.users, args.items, args.topics, gen)
    requests = max(1, args.batch_impressions // args.slate)
    batches = synthetic_batches(8, requests, args.slate, args.history, args.users, args.items,
                                args.topics, gen)
    batches = [tuple(x.to(device) for x in b) for b in batches]

    def train_step(b: tuple[torch.Tensor, ...]) -> None:
        users, hist, shown, topic, clicks = b
        logits = model.score(users, hist, shown, topic)  # (R, K)
        model.step(pointwise_bce(logits.flatten(), clicks.flatten()))

    for i in range(args.warmup):
        train_step(batches[i % len(batches)])
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        train_step(batches[i % len(batches)])
    _sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    impressions = args.steps * requests * args.slate
    return {
        "bench": "train", "regime": "supervised_daily", "device": device.type,
        "users": args.users, "items": args.items, "dim": args.dim, "head_dtype": args.head_dtype,
        "batch_impressions": requests * args.slate, "slate": args.slate,
        "history": args.history, "steps": args.steps, "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2), **process_settings(),
        "impressions_per_s": round(impressions / elapsed, 1),
        # Process CPU time (all threads): robust to other processes only with --threads 1,
        # where it estimates the unloaded one-core rate.
        "impressions_per_cpu_s": round(impressions / cpu, 1),
    }


# ---------------------------------------------------------------------------------------------
# GRPO requests/s: the real regime update (recsys_onpolicy.regimes.policy_gradient.update) on a
# world with the model's ids, so the simulator's answers to the G slates are part of the cost.
# ---------------------------------------------------------------------------------------------
def bench_grpo(args: argparse.Namespace) -> dict | None:
    """Requests/s of the ``grpo`` update: score C candidates per request, sample G slates per
    request, have the simulator answer them (clicks), group-normalised advantages, one fused-TBE
    + Adam step. Requests (uniform users, random histories, candidates from the world's
    retrieval mix) are generated before timing and cycled."""
    from recsys_onpolicy.regimes import TrainContext, resolve_regime
    from recsys_onpolicy.regimes.policy_gradient import update
    from simulators.candidates import sample_candidates
    from simulators.day import Requests
    from simulators.presets import default_latent
    from simulators.rng import make_generator
    from simulators.world import make_world

    cfg = ModelConfig(embedding_dim=args.dim, device=args.device, head_dtype=args.head_dtype)
    device = resolve_device(cfg.device)
    world = make_world(default_latent({
        "users": {"n_users": args.users}, "device": device.type, "slate_size": args.slate,
        "items": {"n_items": args.items, "n_topics": args.topics, "items_per_day": 0},
        "candidates": {"n_candidates": args.candidates}, "history_len": args.history,
    }), make_generator(0, device))
    model = TrainableScorer(cfg, args.users, args.items, args.topics,
                            torch.Generator().manual_seed(0))
    regime = resolve_regime({"preset": "grpo", "group_size": args.group_size})
    gen = make_generator(1, device)
    ctx = TrainContext(regime=regime, policy=model, reference=None, world=world, gen=gen,
                       temperature=1.0, batch_size=args.grpo_requests)
    b, h = args.grpo_requests, args.history
    batches = []
    for _ in range(8):
        users = torch.randint(0, args.users, (b,), generator=gen, device=device)
        hist = torch.randint(0, args.items, (b, h), generator=gen, device=device)
        lengths = torch.randint(0, h + 1, (b, 1), generator=gen, device=device)
        hist[torch.arange(h, device=device)[None, :] >= lengths] = -1  # (B, H) -1 padded
        cand = sample_candidates(world, users, gen)  # (B, C)
        batches.append(Requests(day=0, request_id=torch.arange(b, device=device), users=users,
                                cohort=world.users.cohort[users], history=hist, candidates=cand,
                                item_topic=world.items.topic))
    for i in range(args.warmup):
        update(ctx, batches[i % len(batches)])
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        update(ctx, batches[i % len(batches)])
    _sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    requests = args.steps * b
    return {
        "bench": "train", "regime": "grpo", "device": device.type,
        "users": args.users, "items": args.items, "dim": args.dim, "head_dtype": args.head_dtype,
        "batch_requests": b, "candidates": args.candidates, "group_size": args.group_size,
        "slate": args.slate, "history": args.history, "steps": args.steps,
        "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
        **process_settings(),
        "requests_per_s": round(requests / elapsed, 1),
        "slates_per_s": round(requests * args.group_size / elapsed, 1),
        "requests_per_cpu_s": round(requests / cpu, 1),
    }


def process_settings() -> dict:
    """The environment settings that move these numbers (see the module docstring)."""
    return {k.lower(): os.environ.get(k) for k in
            ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GLIBC_TUNABLES")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=positive, help="default 1e6 (--quick 1e4)")
    p.add_argument("--items", type=positive, help="default 1e5 (--quick 2,000)")
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--slate", type=int, default=10, help="impressions K per request")
    p.add_argument("--history", type=int, default=20, help="history length H")
    p.add_argument("--batch-impressions", type=int, default=8192)
    p.add_argument("--steps", type=positive, help="timed steps (default 50; --quick 5)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5; --quick 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--head-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="ModelConfig.head_dtype: the dense head's compute dtype")
    p.add_argument("--candidates", type=int, default=100, help="grpo: candidates C per request")
    p.add_argument("--group-size", type=int, default=5, help="grpo: slates G per request")
    p.add_argument("--grpo-requests", type=int, default=512, help="grpo: requests per update")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--regime", choices=["supervised_daily", "grpo"], action="append",
                   help="figures to run (repeatable; default: both)")
    p.add_argument("--quick", action="store_true",
                   help="small model and few steps (seconds); explicit sizes still win")
    args = p.parse_args(argv)
    sizes = ({"users": 10_000, "items": 2_000, "steps": 5, "warmup": 2} if args.quick else
             {"users": 1_000_000, "items": 100_000, "steps": 50, "warmup": 5})
    for key, value in sizes.items():  # what the command line gave wins over both
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 0:
        p.error(f"argument --warmup: {args.warmup}: must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    benches = {"supervised_daily": bench_supervised, "grpo": bench_grpo}
    for regime in args.regime or list(benches):
        figure = benches[regime](args)
        if figure is not None:
            print(json.dumps(figure), flush=True)


if __name__ == "__main__":
    main()
