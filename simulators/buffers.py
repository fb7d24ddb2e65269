"""Reusable day-sized output buffers: a day's log is written into memory that an earlier day used,
once nothing outside the pool can see that memory any more.

Why: on CPU a day's log at 10^5 users is about 120 MB; glibc maps blocks that large freshly and
unmaps them on free, so every day paid the first-touch page faults again. Measured on the 2-core
VM (touching 120 MB): 48 ms with 4 KiB pages; with ``glibc.malloc.hugetlb=1`` 12 ms when huge
pages freed earlier are reused, but about 280 ms when the kernel must assemble new ones.

Safety: a buffer is handed out again only when its storage's reference count is back to what the
pool alone holds, i.e. no tensor, view, NumPy array or Polars frame made from an earlier day's
log is alive anywhere (a caller that keeps its logs simply gets fresh memory). Without the
counter (a torch build lacking ``torch._C._storage_Use_Count``) nothing is ever reused. On CUDA
torch's caching allocator already reuses memory, so the pool allocates plainly there.

Memory: the pool keeps the ``keep`` most recently used buffers per name (default 2: a caller
holding the last day's log while the next day runs needs exactly two), so up to two days of
logs stay allocated for the world's lifetime even when the caller dropped them.
"""
from __future__ import annotations

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_refs(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata)


class BufferPool:
    """Flat buffers per name; :meth:`empty` returns an uninitialised tensor backed by a buffer
    nobody else references, allocating (with 1/16 headroom) when there is none."""

    def __init__(self, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep = {keep}: the pool must keep at least one buffer per name")
        self.keep = keep
        self._bufs: dict[str, list[tuple[torch.Tensor, int]]] = {}  # name -> [(flat, own refs)]

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``; its memory is not shared with any live tensor."""
        device = torch.device(device)
        if device.type != "cpu" or _use_count is None:
            return torch.empty(shape, dtype=dtype, device=device)
        need = 1
        for s in shape:
            need *= int(s)
        bufs = self._bufs.setdefault(name, [])
        for i, (flat, own) in enumerate(bufs):
            if (flat.dtype == dtype and flat.device == device and flat.numel() >= need
                    and _storage_refs(flat) <= own):
                bufs.append(bufs.pop(i))  # most recently used last
                return flat[:need].view(shape)
        flat = torch.empty(need + need // 16, dtype=dtype, device=device)
        bufs.append((flat, _storage_refs(flat)))
        del bufs[:-self.keep]  # forget the least recently used (memory a caller holds stays valid)
        return flat[:need].view(shape)

    def clear(self) -> None:
        """Forget every buffer (their memory is freed once no caller holds it)."""
        self._bufs.clear()
