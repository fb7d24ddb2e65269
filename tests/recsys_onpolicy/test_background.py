"""Tests of recsys_onpolicy/background.py: one write at a time, in order, errors re-raised."""
from __future__ import annotations

import threading

import pytest

from recsys_onpolicy.background import BackgroundWriter


def test_submit_returns_before_the_write_ends_and_wait_joins_it():
    release, done = threading.Event(), []
    writer = BackgroundWriter()
    writer.submit(lambda: release.wait(10) and done.append("a"))
    assert done == []  # still blocked on the event: submit did not wait for it
    release.set()
    writer.wait()
    assert done == ["a"]


def test_writes_run_one_at_a_time_in_submission_order():
    seen, running = [], []

    def write(name):
        running.append(name)
        assert len(running) == 1, running  # never two at once
        seen.append(name)
        running.remove(name)

    with BackgroundWriter() as writer:
        for name in "abcde":
            writer.submit(lambda name=name: write(name))
    assert seen == list("abcde")  # leaving the block waited for the last one


def test_a_failed_write_is_raised_by_the_next_call_then_cleared():
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None)  # the error of the write before it
    writer.wait()  # raised once only
    writer.submit(lambda: {}["missing"])
    with pytest.raises(KeyError):
        writer.wait()

    def leave():
        raise SystemExit(3)

    writer.submit(leave)  # not only Exception subclasses: nothing vanishes in the thread
    with pytest.raises(SystemExit):
        writer.wait()


def test_the_body_error_wins_and_names_the_failed_write():
    with pytest.raises(KeyError) as err, BackgroundWriter() as writer:
        writer.submit(lambda: 1 / 0)
        raise KeyError("body")
    assert any("ZeroDivisionError" in note for note in err.value.__notes__)
