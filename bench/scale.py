"""Scale benchmarks of the daily loop: one JSON line per figure.

Every figure is one run of :func:`recsys_onpolicy.loop.run` (warm-up, then serve -> simulate ->
log -> train -> probe -> checkpoint each day, Parquet logs and checkpoints written to a
temporary folder, deleted afterwards) in its own child process, so that its peak resident
memory (``ru_maxrss``: ``peak_rss_gib``) is its own; under torchrun (``--nproc``) every rank's
peak is listed and summed (``peak_rss_gib_per_rank``, ``peak_rss_gib_total``). World: the
default latent world (``simulators.presets.default_latent``: 8 cohorts, 3 modes, D = 16,
C = 100 candidates, K = 10, H = 20, position-based clicks, drift, about half the users active a
day) with the given users and items; model: ``ModelConfig`` defaults (D = 32, fused row-wise
Adagrad, Adam head, float32; ``--head-dtype bfloat16`` for the mixed-precision head), one
warm-up day.

Figures (``case``):

- ``full``: 1M users x 100k items x 30 days of ``supervised_daily`` and of ``grpo`` on the CPU
  (target on the 2-core machine: under 30 minutes and 16 GiB each).
- ``gpu``: the same at 10M users on one CUDA GPU, or a line with ``skipped`` and the reason.
- ``scaling``: wall time per simulated day of ``supervised_daily`` versus users
  (10^4 .. 10^6, 100k items), and the fitted log-log slope ``day_time_exponent`` (1 = linear)
  with its R^2, and ``day_time_exponent_top``, the slope between the two largest sizes (fixed
  per-day costs flatten the small end).

``--nproc N`` runs each figure under torchrun with N processes (each serves and simulates its
own users, tables sharded, training batches split: :mod:`recsys_onpolicy.distributed`); the
record is rank 0's.

Fields: ``wall_s`` (whole run incl. warm-up), ``warmup_s`` (build + warm-up + day-0 probe),
``day_s`` (wall time per experiment day: median over days), ``cpu_s``, ``warmup_cpu_s`` and
``day_cpu_s`` (the same in process CPU seconds, all threads: less sensitive to other processes
than wall time), ``probe_s`` (median wall time of one day's probes, part of ``day_s``),
``phase_s`` (where a day's wall time goes, median over days per phase: ``serve`` = scoring and
sampling the served slates (CPU only), ``simulate`` = the rest of the simulated day, ``train``,
``write_logs``, ``checkpoint``, ``probe``, ``other``; :class:`PhaseClock`),
``projected_wall_s`` / ``projected_cpu_s`` (a ``full`` figure run with fewer ``--days``:
warm-up + N x the median day, N = the figure's days, 30 or 2 with ``--quick``; a day includes the
previous day's checkpoint write, which overlaps it (about 2 s at full size; the ``checkpoint``
phase is its snapshot plus any wait for the write before it), so the projection leaves out the
last one, and
with ``--days 1`` its one day is the first, in most runs the slowest), ``requests_per_s`` and
``impressions_per_s`` (served requests / impressions of the experiment days over their wall
time; under ``--nproc`` the whole day's requests), ``peak_rss_gib``, the settings, and
``load_avg_1m`` before and after (the machine is shared: numbers are only comparable at similar
load). Under ``--nproc`` the CPU-second fields are rank 0's; ``peak_rss_gib_total`` sums the
ranks' peaks (an upper bound: they need not coincide). A figure that fails has ``error`` (how the
child ended and the exception it raised) and ``stderr_tail``.

Probes: by default the loop's own expected-clicks probe (cheap); ``--probes daily`` runs every
family of :class:`recsys_onpolicy.probes.DailyProbes` at the default ``ProbeConfig`` sizes
(what the experiments run; at 1M users about 5 s a day, mostly the feedback regret over the
whole day's log).

    python bench/scale.py                  # everything (hours on 2 cores)
    python bench/scale.py --quick          # the same figures, smaller: under 10 minutes
    python bench/scale.py --case full --regimes supervised_daily --days 1   # one full-size day
    python bench/scale.py --case full --days 1 --probes daily   # ... with every daily probe

Process settings (recorded in every line): children run with ``OMP_WAIT_POLICY=PASSIVE``
unless the environment sets a policy (OpenMP threads spinning without end on a shared CPU slow
everything down) but ``GOMP_SPINCOUNT=100000`` (a short spin before sleeping: with none, the
second thread was put to sleep and woken for every op; +30% GRPO training throughput with 2
threads), and with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (a day allocates gigabytes of
fresh tensors; first-touch page faults showed up as a large share of system time).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_onpolicy.cli import positive

GIB = 1024**3
HUGETLB = "glibc.malloc.hugetlb=1"  # large allocations on huge pages (as bench/simulator.py)
# OpenMP threads spin this many iterations before they sleep (PASSIVE alone: none, so the second
# thread was woken for every op): +30% GRPO training throughput with 2 threads, measured
SPINCOUNT = "100000"
FULL = {"users": 1_000_000, "items": 100_000, "days": 30}
GPU_USERS = 10_000_000
SCALING_USERS = [10_000, 30_000, 100_000, 300_000, 1_000_000]
# --quick: the same figures, smaller (about 1.5 minutes on the 2-core machine at load ~1.4)
QUICK = {"users": 30_000, "items": 100_000, "days": 2}
QUICK_GPU_USERS = 1_000_000
QUICK_SCALING_USERS = [10_000, 30_000, 100_000, 300_000]


# ---- in the child: one run -----------------------------------------------------------------

def run_config(spec: dict):
    """The RecsysRunConfig of a figure (see the module docstring)."""
    from recsys_onpolicy.run_config import RecsysRunConfig
    from simulators.presets import default_latent

    world = default_latent({"users": {"n_users": spec["users"]},
                            "items": {"n_items": spec["items"]}, "device": spec["device"]})
    return RecsysRunConfig(
        world=world, model={"device": spec["device"], "head_dtype": spec["head_dtype"],
                            "sharding": {"types": spec.get("sharding")}}, regime=spec["regime"],
        days=spec["days"], warmup={"days": spec["warmup_days"]}, seed=0,
        write_logs=spec["write_logs"], checkpoint={"enabled": spec["checkpoint"]})


def measure(spec: dict) -> dict | None:
    """Run one figure in this process; the JSON record (None on ranks other than 0 when run
    under torchrun: every rank runs the loop, rank 0 reports)."""
    import torch

    from recsys_onpolicy import loop
    from recsys_onpolicy.distributed import is_main
    from simulators.config import resolve_device

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = run_config(spec)
    stamps: list[float] = []
    cpu_stamps: list[float] = []  # process CPU time (all threads), robust to a shared machine
    requests: list[int] = []
    phases: list[dict[str, float]] = []  # per day: wall seconds of each phase
    probe = loop.expected_clicks_probe
    if spec.get("probes") == "daily":
        from recsys_onpolicy.probes import DailyProbes

        probe = DailyProbes()  # every probe family at the default ProbeConfig sizes
    cuda = resolve_device(cfg.world.device).type == "cuda"
    clock = PhaseClock(torch.cuda.synchronize if cuda else None)
    clock.install(loop, per_batch=not cuda)
    probe = clock.wrap("probe", probe)

    def timed_probe(step: int, state) -> list[dict]:
        rows = probe(step, state)  # the clock has synchronised CUDA on leaving the probe
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        phases.append(clock.take())
        if step > 0:
            requests.append(len(state.log))
        return rows

    out = Path(spec["out"])  # made (and removed again) by the parent, spawn()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        loop.run(cfg, out, probe_fn=timed_probe, progress=False, experiment="scale")
    finally:
        if is_main():
            shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peaks = rss_per_rank()
    if not is_main():
        return None
    days = [b - a for a, b in itertools.pairwise(stamps)]  # (days,) incl. probe, checkpoint
    day_cpu = [b - a for a, b in itertools.pairwise(cpu_stamps)]
    day_wall = sum(days)
    phase_s = phase_medians(phases[1:], days)
    k = cfg.world.slate_size
    return {
        "wall_s": round(wall, 2), "warmup_s": round(stamps[0] - start, 2),
        "day_s": round(statistics.median(days), 3), "day_s_all": [round(d, 3) for d in days],
        "cpu_s": round(cpu, 2), "warmup_cpu_s": round(cpu_stamps[0] - cpu_start, 2),
        "day_cpu_s": round(statistics.median(day_cpu), 3),
        "probe_s": phase_s["probe"],
        "phase_s": phase_s,
        "requests_per_day": round(statistics.mean(requests)),
        "requests_per_s": round(sum(requests) / day_wall, 1),
        "impressions_per_s": round(k * sum(requests) / day_wall, 1),
        "peak_rss_gib": peaks[0], "peak_rss_gib_per_rank": peaks,
        "peak_rss_gib_total": round(sum(peaks), 3),
        "torch_threads": torch.get_num_threads(),
        "device": str(resolve_device(cfg.world.device)),
    }


class PhaseClock:
    """Wall seconds per phase of the daily loop, each second counted once: time spent inside a
    nested phase (serving, or training with the streaming cadence, inside the simulated day)
    counts for the innermost one only. ``sync`` (CUDA: ``torch.cuda.synchronize``) runs at every
    switch, so GPU work is charged to the phase that queued it."""

    def __init__(self, sync=None) -> None:
        self.sync = sync
        self.totals: dict[str, float] = {}
        self.stack: list[str] = []
        self.mark = time.perf_counter()

    def _switch(self) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        if self.stack:
            self.totals[self.stack[-1]] = self.totals.get(self.stack[-1], 0.0) + now - self.mark
        self.mark = now

    def wrap(self, name: str, fn, inside: str | None = None):
        """``fn`` with its calls timed as phase ``name`` (with ``inside``: only the calls made
        while that phase runs; the others count for their caller's phase)."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if inside is not None and (not self.stack or self.stack[-1] != inside):
                return fn(*args, **kwargs)
            self._switch()
            self.stack.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch()
                self.stack.pop()
        return timed

    def install(self, loop, per_batch: bool) -> None:
        """Time the phases of ``recsys_onpolicy.loop`` (patched in this child process only):
        ``simulate`` (the day's simulation, whatever the phases below leave of it), ``serve``
        (the policy scoring and sampling each batch served in the simulated day, not in the
        probes; only with ``per_batch``: on CUDA its synchronisation per batch would slow the
        day down), ``train``, ``write_logs``, ``checkpoint``; the caller wraps the probes."""
        loop.simulate_day = self.wrap("simulate", loop.simulate_day)
        loop.train_on = self.wrap("train", loop.train_on)
        loop.write_day = self.wrap("write_logs", loop.write_day)
        loop.save_checkpoint = self.wrap("checkpoint", loop.save_checkpoint)
        if per_batch:
            serving_policy = loop.serving_policy
            loop.serving_policy = functools.wraps(serving_policy)(
                lambda *args, **kwargs: self.wrap("serve", serving_policy(*args, **kwargs),
                                                  inside="simulate"))

    def take(self) -> dict[str, float]:
        """The totals since the last ``take`` (the running phase's share so far included)."""
        self._switch()
        out, self.totals = self.totals, {}
        return out


def phase_medians(phases: list[dict[str, float]], days: list[float]) -> dict[str, float]:
    """Median over days of each phase's seconds, plus ``other`` (the day's wall time not in any
    phase: metrics, Python between phases)."""
    names = sorted({name for day in phases for name in day})
    rows = [{**{n: day.get(n, 0.0) for n in names}, "other": total - sum(day.values())}
            for day, total in zip(phases, days)]
    return {n: round(statistics.median(r[n] for r in rows), 3) for n in [*names, "other"]}


def rss_per_rank() -> list[float]:
    """Peak resident memory (GiB) of every rank (just this process without torchrun)."""
    import torch.distributed as dist

    mine = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


# ---- in the parent -------------------------------------------------------------------------

def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def spawn(spec: dict, timeout: float | None) -> dict:
    """Run ``measure(spec)`` in a child process (under torchrun with ``nproc`` > 1)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("GOMP_SPINCOUNT", SPINCOUNT)
    tunables = env.get("GLIBC_TUNABLES", "")
    if HUGETLB not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{HUGETLB}" if tunables else HUGETLB
    record = {"bench": "scale", **spec, "omp_wait_policy": env["OMP_WAIT_POLICY"],
              "gomp_spincount": env["GOMP_SPINCOUNT"],
              "glibc_tunables": env["GLIBC_TUNABLES"], "load_avg_1m_before": load_avg()}
    cmd = [sys.executable, __file__, "--child"]
    if spec.get("nproc", 1) > 1:  # torchrun: every rank runs the loop, in one shared folder
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(spec["nproc"]), __file__, "--child"]
    # The run folder is made and removed here, and the child runs in its own process group, so
    # that a timeout or Ctrl-C stops all of it (:func:`stop`) and leaves no folder behind.
    out = tempfile.mkdtemp(prefix="scale-", dir=spec.get("tmp"))
    spec = dict(spec, out=out)
    try:
        with subprocess.Popen([*cmd, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO,
                              start_new_session=True) as child:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop(child)
                return {**record, "load_avg_1m_after": load_avg(),
                        "error": f"timed out after {timeout} s"}
            except BaseException:  # Ctrl-C reaches only this process: the child has its own
                stop(child)  # session
                raise
    finally:
        shutil.rmtree(out, ignore_errors=True)
    record.update(load_avg_1m_after=load_avg())
    if child.returncode != 0:
        return {**record, **failure(child.returncode, stderr)}
    lines = stdout.strip().splitlines()
    if not lines:
        return {**record, **failure(child.returncode, stderr, "printed no record")}
    return {**record, **json.loads(lines[-1])}


def failure(returncode: int, stderr: str, what: str | None = None) -> dict:
    """``error`` (one line: how the child ended and the exception it raised, the last line of
    stderr that names one; under torchrun a rank's, not torchrun's ChildFailedError) and
    ``stderr_tail`` (its last 20 non-empty lines) of a figure that failed."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if what is None:
        what = (f"killed by {signal.Signals(-returncode).name}" if returncode < 0
                else f"exit status {returncode}")
    raised = [line.strip() for line in lines  # torchrun's own summary names no cause
              if re.match(r"\s*(\[rank\d+\]:\s*)?[\w.]*(Error|Exception|Interrupt|Exit)\b", line)
              and "ChildFailedError" not in line]
    exc = raised[-1] if raised else None
    return {"error": what + (f": {exc}" if exc else ""), "stderr_tail": lines[-20:]}


def stop(child: subprocess.Popen, grace: float = 30.0) -> None:
    """End a child and everything it started. SIGTERM first: torchrun starts each rank in a
    session of its own (out of reach of a signal to the child's group) and, on SIGTERM, stops
    them itself; SIGKILL to the group after ``grace`` seconds."""
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()


def fit_exponent(users: list[float], seconds: list[float]) -> tuple[float, float]:
    """Least-squares slope of log(seconds) on log(users), and its R^2 (NaN with fewer than
    two distinct sizes)."""
    x = [math.log(u) for u in users]
    y = [math.log(s) for s in seconds]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return math.nan, math.nan
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    resid = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(x, y))
    total = sum((b - my) ** 2 for b in y)
    return slope, 1.0 - resid / total if total > 0 else 1.0


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def base_spec(args: argparse.Namespace) -> dict:
    return {"warmup_days": args.warmup_days, "probes": args.probes, "write_logs": not args.no_logs,
            "checkpoint": not args.no_checkpoint, "threads": args.threads, "tmp": args.tmp,
            "nproc": args.nproc, "sharding": args.sharding, "head_dtype": args.head_dtype}


def bench_full(args: argparse.Namespace) -> None:
    size = QUICK if args.quick else FULL
    for regime in args.regimes:
        spec = {"case": "full", "quick": args.quick, "regime": regime, "users": size["users"],
                "items": size["items"], "days": args.days or size["days"], "device": "cpu",
                **base_spec(args)}
        emit(with_projection(spawn(spec, args.timeout), size["days"]))


def with_projection(record: dict, days: int) -> dict:
    """A record of fewer days than the figure's gets ``projected_wall_s`` = warm-up + ``days``
    x the median day (and the same in CPU seconds): what the whole figure would take."""
    if "day_s" not in record or record["days"] >= days:
        return record
    return {**record, "projected_days": days,
            "projected_wall_s": round(record["warmup_s"] + days * record["day_s"], 1),
            "projected_cpu_s": round(record["warmup_cpu_s"] + days * record["day_cpu_s"], 1)}


def bench_gpu(args: argparse.Namespace) -> None:
    import torch

    size = QUICK if args.quick else FULL
    users = QUICK_GPU_USERS if args.quick else GPU_USERS
    for regime in args.regimes:
        spec = {"case": "gpu", "quick": args.quick, "regime": regime, "users": users,
                "items": size["items"], "days": args.days or size["days"], "device": "cuda",
                **base_spec(args)}
        if not torch.cuda.is_available():
            emit({"bench": "scale", **spec, "skipped": "no CUDA device on this machine"})
        else:
            emit(spawn(spec, args.timeout))


def bench_scaling(args: argparse.Namespace) -> None:
    users = args.users or (QUICK_SCALING_USERS if args.quick else SCALING_USERS)
    days = args.days or 2
    points = []
    for n in users:
        spec = {"case": "scaling", "regime": "supervised_daily", "users": n,
                "items": FULL["items"], "days": days, "device": args.device, **base_spec(args)}
        record = spawn(spec, args.timeout)
        emit(record)
        if "day_s" in record:
            points.append((n, record["day_s"]))
    points.sort()  # by users, whatever the order of --users
    if len({u for u, _ in points}) >= 2:
        slope, r2 = fit_exponent([u for u, _ in points], [s for _, s in points])
        largest = [p for p in points if p[0] >= sorted({u for u, _ in points})[-2]]
        top, _ = fit_exponent([u for u, _ in largest], [s for _, s in largest])
        emit({"bench": "scale", "case": "scaling_fit", "regime": "supervised_daily",
              "users": [u for u, _ in points], "day_s": [s for _, s in points],
              "day_time_exponent": round(slope, 3), "r2": round(r2, 4),
              "day_time_exponent_top": round(top, 3),
              "note": "slope of log(day_s) on log(users) over all points, and between the two "
                      "largest (fixed per-day costs flatten the small end); 1 = linear"})


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller figures: full at 3*10^4 users x 2 days, GPU at 10^6 users, "
                        "scaling over 10^4 .. 3*10^5 users")
    p.add_argument("--case", choices=["full", "gpu", "scaling"], action="append",
                   help="figures to run (repeatable; default: all three)")
    p.add_argument("--regimes", nargs="+", default=["supervised_daily", "grpo"],
                   help="regimes of the full and GPU figures")
    p.add_argument("--days", type=positive, help="experiment days (default 30; scaling 2)")
    p.add_argument("--users", type=positive, nargs="+", help="scaling: user counts")
    p.add_argument("--warmup-days", type=int, default=1, help="warm-up days before day 0")
    p.add_argument("--device", default="cpu", help="scaling: cpu | cuda | auto")
    p.add_argument("--threads", type=positive, help="torch threads in the children")
    p.add_argument("--nproc", type=positive, default=1,
                   help="processes per figure (torchrun, sharded tables); default 1")
    p.add_argument("--sharding", nargs="+", choices=["table_wise", "column_wise", "row_wise",
                                                      "table_row_wise"],
                   help="with --nproc: the sharding types the planner may use (default: "
                        "run.model.sharding's)")
    p.add_argument("--head-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="run.model.head_dtype: the dense head's compute dtype (the targets are "
                        "for the default, float32)")
    p.add_argument("--probes", choices=["expected_clicks", "daily"], default="expected_clicks",
                   help="probes after every day: the loop's expected-clicks probe (default) or "
                        "every family of recsys_onpolicy.probes.DailyProbes at ProbeConfig "
                        "defaults (what experiments run)")
    p.add_argument("--no-logs", action="store_true", help="do not write the Parquet logs")
    p.add_argument("--no-checkpoint", action="store_true", help="no daily checkpoints")
    p.add_argument("--timeout", type=float, help="seconds per figure")
    p.add_argument("--tmp", help="folder for the runs' temporary output (default: the OS's)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        record = measure(json.loads(args.child))
        if record is not None:
            emit(record)
        return 0
    cases = args.case or ["full", "gpu", "scaling"]
    for case in cases:
        {"full": bench_full, "gpu": bench_gpu, "scaling": bench_scaling}[case](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
