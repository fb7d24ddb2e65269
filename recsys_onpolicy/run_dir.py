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
from collections.abc import Iterable
from pathlib import Path

import yaml

from simulators.atomic import atomic_write
from simulators.typed_config import ConfigError


def prepare_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False,
                    keep: Iterable[str | Path] = ()) -> Path:
    """Create ``out`` or check it may be used; raises ConfigError and touches nothing otherwise.

    - new folder: created.
    - existing, non-empty folder: an error unless ``resume`` (continue where it stopped) or
      ``overwrite`` (delete it first: only when explicitly asked, only a run folder, i.e. one
      holding ``config.yaml``, and never one that holds the working directory or a path in
      ``keep``, e.g. the config file being run, unless that is the folder's own
      ``config.yaml``).
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
        _check_deletable(out, keep)
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the output directory {out}: {err.strerror or err}; "
                          "choose another --out") from None
    return out


def _check_deletable(out: Path, keep: Iterable[str | Path]) -> None:
    """ConfigError unless ``--overwrite`` may delete the folder ``out``."""
    if out.is_symlink():
        raise ConfigError(f"--overwrite: {out} is a symbolic link; give the folder it points to "
                          f"({out.resolve()}) or another --out")
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"--overwrite replaces a run folder, but {out} holds no config.yaml: it "
                          "is not a run written by recsys-onpolicy, so it is left alone; choose "
                          "another --out or empty it yourself")
    real = out.resolve()
    for path in [Path.cwd(), *map(Path, keep)]:
        if path.resolve() == real / "config.yaml":  # rerunning a run from its own stored config:
            continue  # already read, and written back as the new run's config
        if path.resolve().is_relative_to(real):
            raise ConfigError(f"--overwrite would delete {out}, which holds {path}; choose "
                              "another --out")


def write_config(out: Path, data: dict) -> Path:
    """Write the resolved config as ``config.yaml`` (atomically)."""
    text = yaml.safe_dump(data, sort_keys=False)
    return atomic_write(out / "config.yaml", lambda fh: fh.write(text.encode("utf-8")))


def check_resume_config(out: Path, data: dict) -> None:
    """On --resume the config must equal the stored one: a changed config would mix two runs."""
    path = out / "config.yaml"
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--resume: {path} cannot be read ({type(err).__name__}); it was "
                          "edited or damaged: restore it, or start a new --out") from None
    if not isinstance(stored, dict):  # empty, or not a mapping: not a config this tool wrote
        what = "empty" if stored is None else f"a {type(stored).__name__}"
        raise ConfigError(f"--resume: {path} holds no config ({what}); it was edited or "
                          "damaged: restore it, or start a new --out")
    if stored != data:
        diff = ", ".join(differing_keys(stored, data)[:5])
        raise ConfigError(
            f"--resume: the config differs from the one stored in {path} (at {diff}); "
            "resume with the same config and --set options, or start a new --out"
        )


def differing_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted paths where two nested mappings differ (a whole value where they are not both
    mappings)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "<top level>"]
    out = []
    for key in sorted(set(a) | set(b), key=str):
        out += differing_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
    return out
