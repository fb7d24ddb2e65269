"""BufferPool: memory is handed out again only once nothing outside the pool references it."""
import numpy as np
import pytest
import torch

from simulators.buffers import BufferPool

CPU = torch.device("cpu")


def test_reused_only_after_every_view_is_gone():
    pool = BufferPool()
    a = pool.empty("x", (4, 3), torch.long, CPU)
    view = a[1:]
    del a
    b = pool.empty("x", (4, 3), torch.long, CPU)  # `view` still holds the first buffer
    assert b.data_ptr() != view.data_ptr() - 3 * 8
    first = view.data_ptr() - 3 * 8
    del view
    c = pool.empty("x", (2, 3), torch.long, CPU)  # smaller fits in the first buffer
    assert c.data_ptr() == first and c.shape == (2, 3) and c.is_contiguous()
    del b, c


def test_numpy_arrays_keep_a_buffer_alive():
    pool = BufferPool()
    t = pool.empty("x", (5,), torch.float32, CPU)
    arr = t.numpy()
    ptr = t.data_ptr()
    del t
    assert pool.empty("x", (5,), torch.float32, CPU).data_ptr() != ptr
    assert isinstance(arr, np.ndarray)


def test_names_dtypes_and_sizes_are_kept_apart():
    pool = BufferPool()
    ptr = pool.empty("x", (8,), torch.long, CPU).data_ptr()
    assert pool.empty("y", (8,), torch.long, CPU).data_ptr() != ptr  # other name
    assert pool.empty("x", (8,), torch.int32, CPU).data_ptr() != ptr  # other dtype
    assert pool.empty("x", (100,), torch.long, CPU).data_ptr() != ptr  # too small
    assert pool.empty("x", (8,), torch.long, CPU).data_ptr() in {
        b.data_ptr() for b, _ in pool._bufs["x"]}


def test_keeps_at_most_keep_buffers_per_name():
    pool = BufferPool(keep=2)
    held = [pool.empty("x", (10,), torch.long, CPU) for _ in range(4)]  # all alive: 4 allocations
    assert len(pool._bufs["x"]) == 2 and len({t.data_ptr() for t in held}) == 4
    pool.clear()
    assert pool._bufs == {}
    with pytest.raises(ValueError, match="keep"):
        BufferPool(keep=0)
