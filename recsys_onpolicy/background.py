"""File writes that overlap the next day's work: one at a time, on a worker thread.

The daily loop hands :class:`BackgroundWriter` the write of a *snapshot* (a checkpoint's
tensors are copies: the live tables go on training) and goes on with the next day. The next
:meth:`~BackgroundWriter.submit` and :meth:`~BackgroundWriter.wait` first wait for the write in
flight, so at most one runs and files land in the order they were submitted; an error raised by
a write is raised again there, in the caller's thread. Leaving the ``with`` block waits too, so
when the loop returns (or fails) every submitted file is on disk. The writes themselves are
atomic (:func:`simulators.atomic.atomic_write`): a run killed mid-write keeps the previous file.

Why: writing a 1M-user checkpoint (about 0.5 GB) took about 2 s a day, mostly the kernel's
copy and the disk; serving the next day meanwhile uses the CPU that the write leaves idle.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class BackgroundWriter:
    """Run ``write()`` callables one at a time on a worker thread (see the module docstring).

    Usage::

        with BackgroundWriter() as writer:
            for day in days:
                ...
                writer.submit(lambda: save(snapshot, path))   # returns at once
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], object]) -> None:
        """Wait for the write in flight (raising its error, if any), then start ``write``."""
        self.wait()

        def work() -> None:
            try:
                write()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller by wait()
                self._error = err

        self._thread = threading.Thread(target=work, name="recsys-onpolicy-writer")
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of a failed write."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.wait()
            return
        try:  # the body failed: still let the write finish, but report the body's error
            self.wait()
        except Exception as err:  # noqa: BLE001 - noted on the error already raised
            exc.add_note(f"(a background file write failed too: {err!r})")
