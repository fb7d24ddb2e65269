"""Atomic file writes: a run killed mid-write never leaves a half file.

The bytes go to a temporary file in the target's folder, are flushed and fsync'ed, and the file
is renamed over the target (``os.replace`` is atomic on POSIX). On any error the temporary file
is removed and the previous file, if any, is untouched. Every writer of logs, metrics,
checkpoints, configs and reports in the project goes through :func:`atomic_write`. The file gets
the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
owner-only 0600 of a temporary file.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a temporary binary file, then move it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
