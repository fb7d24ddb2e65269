"""Process-group setup and the DistributedModelParallel wrap that gives tables fused optimizers.

Why DMP even on one CPU: an unsharded torchrec ``EmbeddingBagCollection`` builds a dense
gradient for every whole table on each step (about 10x slower here); sharding it with DMP puts
the tables into fbgemm's ``SplitTableBatchedEmbeddingBagsCodegen`` (the fused TBE kernel),
whose backward updates only the looked-up rows with the fused optimizer and never
materialises a table-sized gradient.

- :func:`ensure_process_group`: reuse the default process group if one exists (e.g. under
  ``torchrun``); else start one from torchrun's environment variables if present; else a
  single-process group (gloo on CPU, gloo+nccl on CUDA) on a TCP store bound to a free port
  (port 0: the OS picks it, so parallel test processes never collide).
- :func:`shard_tables`: table-wise plan (table i on rank i mod world size), fused kernel,
  fused optimizer settings from the config; dense parameters are wrapped in DDP only when the
  world size is above 1.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan

FUSED_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


def ensure_process_group(device: torch.device) -> dist.ProcessGroup:
    """The default process group, created if there is none (see the module docstring)."""
    if dist.is_initialized():
        return dist.group.WORLD
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, init_method="env://")
    else:
        store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
    return dist.group.WORLD


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, this process's GPU (LOCAL_RANK); otherwise ``device``."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def fused_params(optimizer: str, lr: float, eps: float) -> dict:
    """fbgemm TBE optimizer settings (no weight decay: the CPU kernels ignore it)."""
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"sparse optimizer {optimizer!r}: use one of {sorted(FUSED_OPTIMIZERS)}")
    return {"optimizer": FUSED_OPTIMIZERS[optimizer], "learning_rate": lr, "eps": eps}


def shard_tables(
    module: nn.Module,
    ebc_name: str,
    tables: list[str],
    params: dict,
    device: torch.device,
    pg: dist.ProcessGroup,
) -> DistributedModelParallel:
    """Wrap ``module`` in DMP; its submodule ``ebc_name`` (an EmbeddingBagCollection on 'meta')
    becomes a sharded collection with fused TBE tables trained by ``params``' optimizer."""
    world = dist.get_world_size(pg)
    sharder = EmbeddingBagCollectionSharder(fused_params=dict(params))
    plan = construct_module_sharding_plan(
        getattr(module, ebc_name),
        {t: table_wise(rank=i % world, compute_kernel="fused") for i, t in enumerate(tables)},
        sharder=sharder,
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        world_size=world,
        device_type=device.type,
    )
    return DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=ShardingPlan({ebc_name: plan}),
        sharders=[sharder],
        init_data_parallel=world > 1,  # DDP for dense grads only when there is more than one rank
    )
