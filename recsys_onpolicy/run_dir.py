"""The run directory: created safely, never clobbered by accident.

Layout (the same for every experiment and domain)::

    RUN_DIR/
      config.yaml        the resolved config (after --set overrides)
      metrics.parquet    all runs' metrics in the long schema (recsys_onpolicy.results)
      report.html        the self-contained report
      runs/<regime>/seed=<s>/   per-run logs (Parquet by day), checkpoints, metrics
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from simulators.typed_config import ConfigError


def prepare_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``out`` or check it may be used; raises ConfigError and touches nothing otherwise.

    - new folder: created.
    - existing, non-empty folder: an error unless ``resume`` (continue where it stopped) or
      ``overwrite`` (delete it first: only when explicitly asked).
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: pick one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is a file: choose another --out")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not (resume or overwrite):
        raise ConfigError(
            f"output directory {out} already exists and is not empty: pass --resume to continue "
            "that run, --overwrite to replace it, or choose another --out"
        )
    if resume and not (out / "config.yaml").is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.yaml): run without --resume first")
    if busy and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_config(out: Path, data: dict) -> Path:
    """Write the resolved config as ``config.yaml`` (atomically)."""
    path = out / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def check_resume_config(out: Path, data: dict) -> None:
    """On --resume the config must equal the stored one: a changed config would mix two runs."""
    stored = yaml.safe_load((out / "config.yaml").read_text())
    if stored != data:
        raise ConfigError(
            f"--resume: the config differs from the one stored in {out / 'config.yaml'}; "
            "resume with the same config and --set options, or start a new --out"
        )
