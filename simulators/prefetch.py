"""Run a day's independent jobs (the batches' candidate retrieval) ahead in one background thread.

The day driver uses it on CPU to overlap retrieval with serving on a second core: torch releases
the GIL inside its kernels, so both threads compute at once. Jobs run one after the other, in
order, in the one thread, so a job's random draws come from its generator in exactly the order of
a sequential run (results are bit-identical). :meth:`Prefetcher.wait` blocks until a job is done
and re-raises a job's error in the caller; :meth:`Prefetcher.close` stops and joins the thread
(jobs write into memory the caller owns, so the thread must be gone before the caller drops it).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


class Prefetcher:
    """``jobs[0], jobs[1], ...`` run in order in a background thread; use as a context manager."""

    def __init__(self, jobs: Sequence[Callable[[], None]]):
        self._jobs = list(jobs)
        self._done = 0  # jobs finished
        self._error: Exception | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="simulator-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for job in self._jobs:
            if self._stop:
                return
            try:
                job()
            except Exception as e:  # noqa: BLE001 - re-raised in the caller by wait()
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def wait(self, i: int) -> None:
        """Block until job ``i`` has finished; raise the error of the job that failed first."""
        if not 0 <= i < len(self._jobs):
            raise IndexError(f"job {i} does not exist: there are {len(self._jobs)} jobs")
        with self._cond:
            self._cond.wait_for(lambda: self._done > i or self._error is not None)
            if self._done <= i:
                raise self._error

    def close(self) -> None:
        """Skip the jobs not started yet and wait for the thread to end."""
        self._stop = True
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
