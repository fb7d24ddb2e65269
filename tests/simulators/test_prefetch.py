"""Prefetcher: jobs run in order in one background thread; errors reach the caller."""
import threading

import pytest

from simulators.prefetch import Prefetcher


def test_jobs_run_in_order_in_one_thread():
    seen, threads = [], set()

    def job(i):
        def run():
            seen.append(i)
            threads.add(threading.get_ident())
        return run

    with Prefetcher([job(i) for i in range(20)]) as ahead:
        for i in range(20):
            ahead.wait(i)
            assert seen[: i + 1] == list(range(i + 1))
    assert seen == list(range(20)) and len(threads) == 1
    assert threading.get_ident() not in threads


def test_a_failing_job_raises_in_wait_and_stops_the_rest():
    ran = []

    def boom():
        raise RuntimeError("job 1 failed")

    ahead = Prefetcher([lambda: ran.append(0), boom, lambda: ran.append(2)])
    ahead.wait(0)
    with pytest.raises(RuntimeError, match="job 1 failed"):
        ahead.wait(1)
    with pytest.raises(RuntimeError, match="job 1 failed"):
        ahead.wait(2)
    ahead.close()
    assert ran == [0]
    with pytest.raises(IndexError, match="3 jobs"):
        ahead.wait(3)


def test_close_skips_jobs_not_started():
    started, release = threading.Event(), threading.Event()
    ran = []

    def first():
        started.set()
        release.wait(5)
        ran.append(0)

    ahead = Prefetcher([first] + [lambda: ran.append(1)] * 5)
    started.wait(5)
    closer = threading.Thread(target=ahead.close)
    closer.start()
    release.set()
    closer.join(5)
    assert not closer.is_alive() and not ahead._thread.is_alive()
    assert ran[0] == 0 and len(ran) <= 2  # the running job finishes; later ones are skipped
