"""Suite-wide settings: one torch thread per test worker.

`make test` runs two pytest-xdist workers on the 2-core machines; torch's default of one thread
per core would put four spinning threads on two cores (measured about 10x slower for the
embedding-table training steps), so each worker uses one.
"""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
