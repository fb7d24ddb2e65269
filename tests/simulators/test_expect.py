"""simulators.expect: a clear Python error on CPU, a device-side assert in async mode."""
from __future__ import annotations

import pytest
import torch

from simulators import expect as expect_module
from simulators.expect import expect


def test_cpu_failure_raises_the_given_error_with_details():
    with pytest.raises(KeyError, match="row 3 is bad"):
        expect(torch.tensor(False), KeyError, "short", lambda: "row 3 is bad")
    with pytest.raises(ValueError, match="short"):
        expect(torch.tensor(False), ValueError, "short")


def test_success_never_builds_the_details():
    def details() -> str:
        raise AssertionError("details must only be built on failure")

    expect(torch.tensor(True), ValueError, "short", details)


def test_async_mode_is_a_device_assert_with_the_short_message(monkeypatch):
    monkeypatch.setattr(expect_module, "MODE", "async")
    expect(torch.tensor(True), ValueError, "fine", lambda: "never")
    # On CPU torch._assert_async raises at once; on CUDA it aborts the context later.
    with pytest.raises(RuntimeError, match="the short message"):
        expect(torch.tensor(False), ValueError, "the short message", lambda: "never")
