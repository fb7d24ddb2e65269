"""Run an experiment over several processes with torchrun (``recsys-onpolicy run CONFIG --nproc N``).

Two halves:

- :func:`launch_distributed` (the CLI calls it for ``--nproc N`` with N > 1): checks the config
  and prepares the run folder exactly as a one-process run does (bad input: one error line,
  exit status 2, nothing started), then re-executes itself under ``torch.distributed.run``
  with N processes on this machine, forwarding the arguments, and returns torchrun's status.
- :func:`main` / :func:`run_worker` (every rank): joins the process group, rank 0 checks the
  run folder and broadcasts the resolved config, every rank runs the experiment's runs one
  after another (each run over all ranks: :mod:`recsys_onpolicy.loop`), and rank 0 writes
  ``metrics.parquet`` and the report. The run folder has the same files as a one-process run.

Commands::

    # one machine, 2 processes (CPU: gloo; with GPUs: one GPU per process, NCCL)
    recsys-onpolicy run configs/quickstart.yaml --nproc 2 --out runs/qs2

    # the same through torchrun directly
    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m recsys_onpolicy.launch run configs/quickstart.yaml --out runs/qs2t

    # two machines x 2 processes: run on each machine, with its --node_rank (0 on HOST0);
    # node 0 writes the run folder, the others need the code and the config file only
    python -m torch.distributed.run --nnodes 2 --node_rank 0 --master_addr HOST0 \\
        --master_port 29500 --nproc_per_node 2 \\
        -m recsys_onpolicy.launch run configs/quickstart.yaml --out runs/qs4

``--resume`` / ``--overwrite`` / ``--set`` / ``--seeds`` / ``--no-progress`` mean what they mean
for one process. A run folder may be resumed with another number of processes (checkpoints hold
whole tables).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from simulators.typed_config import ConfigError


def worker_argv(args: argparse.Namespace, out) -> list[str]:
    """The worker's command line: the same run, in the folder the launcher prepared."""
    argv = ["run", str(args.config), "--out", str(out), "--resume"]
    for override in args.overrides:
        argv += ["--set", override]
    if getattr(args, "seeds", None):
        argv += ["--seeds", str(args.seeds)]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def rendezvous_argv(args: argparse.Namespace) -> list[str]:
    """torchrun's rendezvous arguments: ``--standalone`` (one machine, a free port) unless the
    namespace carries multi-node settings (``nnodes``, ``node_rank``, ``master_addr``,
    ``master_port``)."""
    nnodes = getattr(args, "nnodes", None) or 1
    if nnodes == 1:
        return ["--standalone"]
    return ["--nnodes", str(nnodes), "--node_rank", str(getattr(args, "node_rank", 0) or 0),
            "--master_addr", str(getattr(args, "master_addr", None) or "127.0.0.1"),
            "--master_port", str(getattr(args, "master_port", None) or 29500)]


def wants_cuda(data: dict) -> bool:
    """Whether the experiment's model runs on CUDA here (``device: auto`` with a GPU)."""
    device = data.get("run", {}).get("model", {}).get("device", "auto")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def check_distributable(data: dict, args: argparse.Namespace) -> None:
    """Raise ConfigError for what cannot run over several processes."""
    if data.get("domain", "recsys") != "recsys":
        raise ConfigError("--nproc: llm experiments run in one process; drop --nproc")
    if getattr(args, "jobs", None) not in (None, 1):
        raise ConfigError(f"--jobs {args.jobs} with --nproc {args.nproc}: each run already uses "
                          "all the processes, one run after another; drop --jobs")
    gpus = torch.cuda.device_count()
    if wants_cuda(data) and args.nproc > gpus:
        raise ConfigError(f"--nproc {args.nproc} > {gpus} GPUs on this machine: use at most "
                          f"{gpus} processes, or set run.model.device=cpu")


def launch_distributed(args: argparse.Namespace) -> int:
    """``recsys-onpolicy run ... --nproc N``: check and prepare, then run N ranks (see the
    module docstring). Inside a torchrun worker it runs this rank's part directly."""
    from recsys_onpolicy.cli import _prepare
    from recsys_onpolicy.distributed import under_torchrun
    from recsys_onpolicy.experiment import load_experiment_data

    if under_torchrun():
        return run_worker(args)
    check_distributable(load_experiment_data(args.config, args.overrides, args.seeds), args)
    if (getattr(args, "node_rank", None) or 0) == 0:
        _, out = _prepare(args)
    else:  # another node: the run folder is node 0's (its rank 0 writes it)
        out = args.out or "runs/unused"
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous_argv(args),
           "--nproc_per_node", str(args.nproc), "-m", "recsys_onpolicy.launch",
           *worker_argv(args, out)]
    print(f"launching {args.nproc} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.call(cmd)


def run_worker(args: argparse.Namespace) -> int:
    """This rank's part of ``run`` (all ranks call it; see the module docstring)."""
    import torch.distributed as dist

    from recsys_onpolicy.cli import _finish, _prepare
    from recsys_onpolicy.distributed import ensure_process_group, from_main, is_main
    from recsys_onpolicy.experiment import load_experiment_data, run_experiment

    # Every rank reads the config to pick the backend (gloo, or NCCL for CUDA); rank 0 then
    # checks the run folder and its resolved config is what every rank runs.
    try:
        data = load_experiment_data(args.config, args.overrides, args.seeds)
    except ConfigError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"recsys-onpolicy run: error: {err}", file=sys.stderr)
        return 2
    ensure_process_group(torch.device("cuda" if wants_cuda(data) else "cpu"))
    try:
        data, out = from_main(lambda: _prepare(args))
        if data.get("domain", "recsys") != "recsys":
            raise ConfigError("llm experiments run in one process: drop --nproc / torchrun")
        frame = run_experiment(data, out, progress=is_main() and not args.no_progress, jobs=1)
        if is_main():
            _finish(frame, out, data.get("experiment", "run"))
        dist.barrier()
    except ConfigError as err:
        if is_main():
            print(f"recsys-onpolicy run: error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry of ``python -m recsys_onpolicy.launch run CONFIG ...`` on every rank (the same
    arguments as ``recsys-onpolicy run``; ``--nproc`` is ignored: torchrun sets the ranks)."""
    from recsys_onpolicy.cli import build_parser

    args = build_parser().parse_args(argv)
    if args.command != "run":
        print(f"recsys_onpolicy.launch runs 'run' only, not {args.command!r}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        print("recsys_onpolicy.launch is started by torchrun (python -m torch.distributed.run "
              "... -m recsys_onpolicy.launch run CONFIG); or use recsys-onpolicy run CONFIG "
              "--nproc N", file=sys.stderr)
        return 2
    return run_worker(args)


if __name__ == "__main__":
    sys.exit(main())
