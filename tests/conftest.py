"""Suite-wide settings: one torch intra-op thread per test.

The tests' tensors are tiny, and `make test` runs two pytest-xdist workers on the 2-core
machines; torch's default of one thread per core would put four spinning threads on two cores
(measured 10-20x slower for the embedding-table training steps). Each test starts with one
thread; a test that changes it gets the previous setting back afterwards. Tests may also request
the fixture by name (``one_thread``) to make the dependency explicit.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
