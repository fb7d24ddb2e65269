"""The command line: ``recsys-onpolicy run | sweep | report | compare``.

Every command validates its arguments and the config before touching the output folder, so a
bad argument, a missing config or an existing output directory gives one clear error line
(exit status 2) and leaves everything on disk as it was.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from simulators.typed_config import ConfigError

EPILOG = """examples:
  recsys-onpolicy run configs/quickstart.yaml
  recsys-onpolicy run configs/recsys/cohort_removal.yaml --seeds 5 --set run.days=20 --out runs/cr
  recsys-onpolicy sweep configs/recsys/lr_sweep.yaml --storage sqlite:///shared/sweep.db
  recsys-onpolicy report runs/quickstart
  recsys-onpolicy compare runs/quickstart runs/tiny_lm_recipe --out runs/compare.html
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recsys-onpolicy", description="Forgetting and feedback loops of daily supervised "
        "recommender retraining vs on-policy slate RL, on a simulator (and the LLM reference).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment config (all regimes x seeds), then report")
    _config_args(run)
    run.add_argument("--seeds", type=positive, help="number of seeds (overrides the config)")
    run.add_argument("--jobs", type=positive, help="parallel processes (default: one per core)")
    run.add_argument("--nproc", type=positive, default=1,
                     help="processes per run under torchrun (sharded tables; default 1)")

    sweep = sub.add_parser("sweep", help="optuna learning-rate sweep of a config's 'sweep' section")
    _config_args(sweep)
    sweep.add_argument("--storage", help="optuna RDB storage URL shared by several machines "
                       "(default: sqlite:///OUT/sweep.db)")
    sweep.add_argument("--trials", type=positive, help="trials per regime (overrides the config)")

    rep = sub.add_parser("report", help="(re)write RUN_DIR/report.html and print the table")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    cmp_ = sub.add_parser("compare", help="one view of several runs (recsys and llm side by side)")
    cmp_.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--out", type=Path, default=Path("compare.html"),
                      help="the HTML file to write (default: compare.html)")
    return p


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, metavar="CONFIG", help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set run.days=5 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<experiment>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def positive(text: str) -> int:
    """argparse type: a whole number >= 1 (also used by the bench/ scripts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _processes(args) -> tuple[int, int]:
    """(processes in all, processes per machine) each run will use: torchrun's inside a worker,
    else ``--nproc`` per machine (x ``nnodes`` when the namespace carries multi-node
    settings)."""
    from recsys_onpolicy.distributed import under_torchrun

    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        return world, int(os.environ.get("LOCAL_WORLD_SIZE", world))
    per_node = getattr(args, "nproc", None) or 1
    return per_node * (getattr(args, "nnodes", None) or 1), per_node


def _prepare(args) -> tuple[dict, Path]:
    """Load + validate the config, then create/check the run directory (in that order)."""
    from recsys_onpolicy.experiment import load_experiment_data, validate_experiment
    from recsys_onpolicy.run_dir import check_resume_config, prepare_run_dir, write_config

    data = load_experiment_data(args.config, args.overrides, getattr(args, "seeds", None))
    validate_experiment(data, source=f"{args.config}: ", processes=_processes(args))
    out = args.out or Path("runs") / str(data.get("experiment", args.config.stem))
    out = prepare_run_dir(out, resume=args.resume, overwrite=args.overwrite, keep=[args.config])
    if args.resume:
        check_resume_config(out, data)
    else:
        write_config(out, data)
    return data, out


def cmd_run(args) -> int:
    from recsys_onpolicy.experiment import run_experiment

    if args.nproc > 1:
        from recsys_onpolicy.launch import launch_distributed

        return launch_distributed(args)
    data, out = _prepare(args)
    frame = run_experiment(data, out, progress=not args.no_progress, jobs=args.jobs)
    return _finish(frame, out, data.get("experiment", "run"))


def _finish(frame, out: Path, title: str) -> int:
    from recsys_onpolicy.report import report_run_dir
    from recsys_onpolicy.results import write_metrics

    write_metrics(frame, out / "metrics.parquet")
    report = report_run_dir(out)
    print_summary(frame)
    print(f"\nmetrics: {out / 'metrics.parquet'}\nreport:  {report}")
    return 0


def print_summary(frame) -> None:
    """The Gain/Drop table, or for a sweep one row per trial (its lr, gain and drop)."""
    import polars as pl

    from recsys_onpolicy.tables import SWEEP_METRIC, format_table, gain_drop_table, has_metric

    if has_metric(frame, SWEEP_METRIC):
        from recsys_onpolicy.plots import sweep_points

        trials = sweep_points(frame).select("regime", pl.col("seed").alias("trial"), "lr",
                                            "gain", "drop")
        print(trials.sort("regime", "lr"))
    else:
        print(format_table(gain_drop_table(frame)))


def cmd_sweep(args) -> int:
    from recsys_onpolicy.experiment import load_experiment_data
    from recsys_onpolicy.sweep_runner import run_sweep_experiment, validate_sweep_experiment

    # the sweep's own requirements are checked before _prepare touches the output folder
    validate_sweep_experiment(load_experiment_data(args.config, args.overrides),
                              source=f"{args.config}: ", storage=args.storage)
    data, out = _prepare(args)
    frame = run_sweep_experiment(data, out, storage=args.storage, trials=args.trials,
                                 progress=not args.no_progress)
    return _finish(frame, out, data.get("experiment", "sweep"))


def cmd_report(args) -> int:
    from recsys_onpolicy.report import report_run_dir
    from recsys_onpolicy.results import read_metrics
    from recsys_onpolicy.tables import require_rows

    metrics = args.run_dir / "metrics.parquet"
    if not metrics.is_file():
        raise ConfigError(f"{args.run_dir} holds no metrics.parquet: give a folder written by "
                          "'recsys-onpolicy run'")
    try:  # an empty or foreign metrics file: one line, and report.html is left as it was
        frame = require_rows(read_metrics(metrics))
    except ValueError as err:
        raise ConfigError(f"{metrics}: {err}") from None
    report = report_run_dir(args.run_dir)
    print_summary(frame)
    print(f"\nreport: {report}")
    return 0


def cmd_compare(args) -> int:
    from recsys_onpolicy.compare import write_comparison
    from recsys_onpolicy.report import page_kind

    for d in args.run_dirs:
        if not (d / "metrics.parquet").is_file():
            raise ConfigError(f"{d} holds no metrics.parquet: give folders written by "
                              "'recsys-onpolicy run'")
    if args.out.exists() and args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder: give the path of an .html file")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {args.out}: the comparison is an HTML page; give a path ending "
                          "in .html (nothing else is overwritten)")
    if args.out.is_file() and page_kind(args.out) != "comparison":
        raise ConfigError(f"--out {args.out} exists and is not a comparison page (a run's "
                          "report, or another file): give a new path; only an earlier "
                          "comparison is replaced (one written by an older version carries no "
                          "marker: delete it yourself)")
    try:
        path = write_comparison(args.run_dirs, args.out)
    except ValueError as err:  # e.g. the same run given twice: one line, not a traceback
        raise ConfigError(str(err)) from None
    print(f"comparison: {path}")
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"recsys-onpolicy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written, a full disk: no traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"recsys-onpolicy {args.command}: error: {err.strerror or err}{where}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
