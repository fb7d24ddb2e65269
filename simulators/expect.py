"""Value checks inside the day loop that never make the host wait for the GPU.

``expect(ok, error, message, details)`` checks a condition that is itself a tensor (ids in
range, no duplicate in a slate, a finite log-probability). Reading such a value on the host is a
round trip on CUDA: the CPU stops until the GPU has caught up. Per batch that is several stalls,
so the day loop's checks go through :func:`expect`:

- On CPU the value is read (free there) and a failure raises ``error`` with the detailed
  message from ``details()`` (which may read more values: it only runs on failure).
- On CUDA the check is queued as an asynchronous device-side assert (``torch._assert_async``):
  the host goes on, and a failed check stops the CUDA context with ``message`` (CUDA cannot
  raise a Python exception from the device; the process must restart, as after any device
  assert). Run on CPU for the detailed error.

``MODE`` picks the behaviour: ``"auto"`` (by device, the default) or ``"async"`` (device-side
asserts on every device: what the tests use to check, on CPU, that the day loop's own code
reads no tensor value per batch).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

MODE: Literal["auto", "async"] = "auto"


def expect(
    ok: torch.Tensor,
    error: type[Exception],
    message: str,
    details: Callable[[], str] | None = None,
) -> None:
    """Raise ``error(details() or message)`` unless ``ok`` (a one-element bool tensor) is True;
    on CUDA (or with ``MODE = "async"``) queue a device-side assert with ``message`` instead."""
    if MODE == "async" or ok.device.type == "cuda":
        torch._assert_async(ok, message)
        return
    if not bool(ok):
        raise error(details() if details is not None else message)
