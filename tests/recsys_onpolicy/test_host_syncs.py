"""No host round trip per batch in the day loop (the GPU path's requirement), checked on CPU.

On CUDA, reading a tensor's value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
``nonzero``, a boolean-mask index, ...) makes the CPU wait for the GPU. The day loop may read
values a fixed number of times per day (the day's requests, per-day seeds, the logged means) but
never per batch. :class:`HostReads` counts such calls made directly by the project's code (not
inside torch, torchrec or fbgemm, whose reads of their own CPU-side counters cost no sync); with
:mod:`simulators.expect` in its CUDA behaviour (``MODE = "async"``), a day served and trained in
4x as many batches must make exactly as many host reads. On a GPU machine the CUDA variant
checks the same with torch's own synchronisation detector.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Self

import pytest
import torch
from torch.overrides import TorchFunctionMode

from recsys_onpolicy import loop
from recsys_onpolicy.model import ModelConfig
from recsys_onpolicy.run_config import RecsysRunConfig
from simulators import expect as expect_module
from simulators.presets import tiny

PROJECT = [str(Path(__file__).resolve().parents[2] / name) for name in
           ("recsys_onpolicy", "simulators")]
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu",
         "numpy", "unique", "masked_select"}


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values by the project's own code, by (file, line)."""

    def __init__(self) -> None:
        super().__init__()
        self.where: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        read = name in READS
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            read = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if read:
            caller = sys._getframe(1)
            if any(caller.f_code.co_filename.startswith(p) for p in PROJECT):
                self.where[(Path(caller.f_code.co_filename).name, caller.f_lineno, name)] += 1
        return func(*args, **(kwargs or {}))


def reads_of_day_one(regime, serve: int, train: int, tmp_path, monkeypatch,
                     count=HostReads, device: str = "cpu") -> tuple[Counter, int]:
    """Host reads (``count()``: a context manager with a ``where`` Counter) during experiment
    day 1 (day 0 warms caches up), and the day's number of requests."""
    world = tiny({"device": device, "users": {
        "n_users": 240, "activity_mean": 1.0, "activity_spread": 0.0,
        "cohort_activity_spread": 0.0}})
    cfg = RecsysRunConfig(
        world=world, model=ModelConfig(embedding_dim=8, head_width=16, device=device),
        regime=regime, days=2, serve_batch_size=serve, train_batch_size=train,
        warmup={"days": 1}, write_logs=False, checkpoint={"enabled": False})
    counted: dict = {}
    run_day = loop.run_day

    def day(state, out):
        if state.day != 1:
            return run_day(state, out)
        with count() as reads:
            run_day(state, out)
        counted["reads"], counted["requests"] = reads.where, len(state.log)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "run_day", day)
        loop.run(cfg, tmp_path / f"{serve}", progress=False, probe_fn=lambda s, st: [])
    return counted["reads"], counted["requests"]


REGIMES = ["supervised_daily", "grpo", "grpo_kl", "ppo", "iterative_sft", "sft_on_rl_traces",
           {"preset": "supervised_daily", "cadence": "streaming"}]


@pytest.mark.parametrize("regime", REGIMES, ids=lambda r: r if isinstance(r, str) else "streaming")
def test_host_reads_per_day_do_not_grow_with_the_number_of_batches(regime, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(expect_module, "MODE", "async")  # the checks as on CUDA
    few, requests = reads_of_day_one(regime, 120, 40, tmp_path, monkeypatch)
    many, again = reads_of_day_one(regime, 30, 10, tmp_path, monkeypatch)
    assert requests == again >= 200  # the same day, served in 4x as many batches
    assert many == few, f"reads that grow with the batches: {many - few}"


class CudaSyncs:
    """torch's own detector (``torch.cuda.set_sync_debug_mode("warn")``): counts the CUDA
    synchronisations whose Python caller is the project's code, by (file, line)."""

    def __enter__(self) -> Self:
        self.where: Counter = Counter()
        self._catch = warnings.catch_warnings(record=True)
        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        for w in self._seen:
            if "synchroniz" in str(w.message) and any(w.filename.startswith(p) for p in PROJECT):
                self.where[(Path(w.filename).name, w.lineno)] += 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("regime", ["supervised_daily", "grpo"])
def test_cuda_synchronisations_per_day_do_not_grow_with_the_number_of_batches(
        regime, tmp_path, monkeypatch):
    few, requests = reads_of_day_one(regime, 120, 40, tmp_path, monkeypatch, CudaSyncs, "cuda")
    many, again = reads_of_day_one(regime, 30, 10, tmp_path, monkeypatch, CudaSyncs, "cuda")
    assert requests == again >= 200
    assert many == few, f"synchronisations that grow with the batches: {many - few}"
