"""Run the llm_reference tests single-threaded: their tensors are tiny, and intra-op threads on
busy shared cores make them many times slower. The previous setting is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
