"""Process groups, the DistributedModelParallel wrap, and the few collectives a run needs.

Why DMP even on one CPU: an unsharded torchrec ``EmbeddingBagCollection`` builds a dense
gradient for every whole table on each step (about 10x slower here); sharding it with DMP puts
the tables into fbgemm's ``SplitTableBatchedEmbeddingBagsCodegen`` (the fused TBE kernel),
whose backward updates only the looked-up rows with the fused optimizer and never
materialises a table-sized gradient.

- :func:`ensure_process_group`: reuse the default process group if one exists (e.g. under
  ``torchrun``); else start one from torchrun's environment variables if present; else a
  single-process group (gloo on CPU, gloo+nccl on CUDA) on a TCP store bound to a free port
  (port 0: the OS picks it, so parallel test processes never collide).
- :func:`shard_tables`: DMP with a given plan (:mod:`recsys_onpolicy.sharding`), fused kernel,
  fused optimizer settings from the config; with more than one rank the dense parameters are
  wrapped in DDP.
- :func:`gather_rows`: the rows every rank scored, in order, on every rank; its backward keeps
  this rank's rows only (times the world size, see below).
- :func:`gather_state`: whole tables from their shards, on every rank (checkpoints, probes).
- :func:`from_main`: run something on rank 0 only (reading a file) and broadcast the result.

How a run uses several processes (the daily loop is unchanged; see :mod:`recsys_onpolicy.loop`):
every rank holds the same world and the same generators.

- **Simulating and serving: each rank its own users** (:mod:`simulators.shard`,
  :func:`user_shard`). Rank r serves and simulates the requests of the users ``u % world == r``
  with its own streams for candidates, served slates and clicks; the model scores each rank's
  own requests (``TrainableScorer.score(..., local=True)``: the tables' collectives, no row
  gather). After every served batch the ranks exchange their log rows and their users' new
  state, so each rank again holds the whole world and the batch's whole log.
- **Training and probing: one batch, the model's work split.** Every rank holds the same
  day's log and the same training generator, so every rank trains on the same batches: a batch
  of B requests is cut into ``ceil(B / world)`` contiguous rows per rank, each rank scores its
  rows through the sharded model, and :func:`gather_rows` gives every rank all B rows. The loss
  computed from them is then the same on every rank, so the gradient of each rank's rows is
  the one-process gradient of those rows. torchrec and DDP *average* the ranks' gradients
  (torchrec's all-to-all backward divides table gradients by the world size, DDP divides dense
  ones), so :func:`gather_rows` passes back world x the rows' gradient: the average of that is
  the sum over ranks, the one-process gradient of the whole batch. A training step is then the
  one-process step up to the order of float additions (tested). The probes work the same way.

What follows: everything drawn from the shared streams (who requests when, in which order; the
world's end-of-day dynamics; training's minibatches and sampled slates) is what one process
draws; what each rank draws for its own users has the one-process distribution but not its
values, so an N-process run is another sample of the same experiment, not a copy of the
one-process run (tested within a stated tolerance). A run with a given N is deterministic, and
the checkpoint holds only shared state (whole tables, the world, the shared generators: the
ranks' own streams are split off them every day), so a checkpoint of N processes resumes in M.
The price of keeping the whole world on every rank: the world's memory is not divided (0.36 GiB
of user state per million users of the default latent world), nor is the frozen pi_0 used for
KL terms; the model's tables are.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed import DistributedModelParallel, comm_ops
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingEnv, ShardingPlan

from simulators.shard import UserShard

FUSED_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


# ---- process group -------------------------------------------------------------------------

def under_torchrun() -> bool:
    """True in a process started by torchrun (its rendezvous variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def ensure_process_group(device: torch.device) -> dist.ProcessGroup:
    """The default process group, created if there is none (see the module docstring)."""
    if dist.is_initialized():
        return dist.group.WORLD
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if under_torchrun():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
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


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def user_shard() -> UserShard | None:
    """This rank's slice of the users (:mod:`simulators.shard`); None with one process."""
    return UserShard(rank(), world_size()) if world_size() > 1 else None


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def from_main(make: Callable[[], Any]) -> Any:
    """``make()`` run on rank 0 only (e.g. reading a file), its result broadcast to every rank;
    an exception raised on rank 0 is raised on every rank. Without several ranks: ``make()``."""
    if world_size() == 1:
        return make()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", make())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


# ---- the model wrap ------------------------------------------------------------------------

def fused_params(optimizer: str, lr: float, eps: float) -> dict:
    """fbgemm TBE optimizer settings (no weight decay: the CPU kernels ignore it). No bounds
    check in the kernel: ``recsys_onpolicy.model.check_inputs`` has already checked every id
    (with a clear error) before it is hashed into a row (about 1.5 s of a 1M-user GRPO day)."""
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"sparse optimizer {optimizer!r}: use one of {sorted(FUSED_OPTIMIZERS)}")
    return {"optimizer": FUSED_OPTIMIZERS[optimizer], "learning_rate": lr, "eps": eps,
            "bounds_check_mode": BoundsCheckMode.NONE}


def shard_tables(
    module: nn.Module,
    plans: dict[str, EmbeddingModuleShardingPlan],
    sharder: EmbeddingBagCollectionSharder,
    device: torch.device,
    pg: dist.ProcessGroup,
) -> DistributedModelParallel:
    """Wrap ``module`` in DMP; each of its submodules named in ``plans`` (EmbeddingBagCollections
    on 'meta') becomes a sharded collection placed by its plan, with fused TBE tables trained by
    ``sharder``'s fused optimizer; dense parameters get DDP with more than one rank."""
    world = dist.get_world_size(pg)
    if world > 1 and not comm_ops.get_gradient_division():
        raise RuntimeError("torchrec's gradient division is off (comm_ops.set_gradient_division"
                           "(False)); gather_rows assumes table gradients averaged over ranks, "
                           "like DDP's: turn it back on")
    with warnings.catch_warnings():  # torchrec's own DDP call uses a deprecated argument
        warnings.filterwarnings("ignore", ".*broadcast_buffers", FutureWarning)
        return DistributedModelParallel(
            module,
            env=ShardingEnv.from_process_group(pg),
            device=device,
            plan=ShardingPlan(dict(plans)),
            sharders=[sharder],
            init_data_parallel=world > 1,  # DDP for dense grads only with more than one rank
        )


# ---- collectives on tensors ----------------------------------------------------------------

def local_rows(n: int, world: int, rank_: int, device: torch.device) -> torch.Tensor:
    """Row indices (per,) this rank scores out of ``n``: the contiguous block
    ``[rank * per, (rank + 1) * per)`` with ``per = ceil(n / world)``; positions past ``n``
    repeat row 0 (padding, so every rank runs the same batch size; their gradient is zero)."""
    per = -(-n // world)
    idx = torch.arange(rank_ * per, (rank_ + 1) * per, device=device)
    return torch.where(idx < n, idx, torch.zeros_like(idx))


class _GatherRows(torch.autograd.Function):
    """All ranks' row blocks concatenated (and cut to n rows); backward keeps this rank's,
    times the world size (see the module docstring)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, n: int, pg: dist.ProcessGroup) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(pg))]
        dist.all_gather(parts, local.contiguous(), group=pg)
        ctx.block = (dist.get_rank(pg) * local.shape[0], local.shape[0], n, len(parts))
        return torch.cat(parts)[:n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        lo, per, n, world = ctx.block
        out = grad.new_zeros((per,) + tuple(grad.shape[1:]))
        hi = min(lo + per, n)
        if hi > lo:
            out[: hi - lo] = grad[lo:hi] * world
        return out, None, None


def gather_rows(local: torch.Tensor, n: int, pg: dist.ProcessGroup) -> torch.Tensor:
    """(n, ...) on every rank from each rank's (per, ...) block (see :func:`local_rows`).

    Backward: the gradient of the gathered rows is the same on every rank (every rank computes
    the same loss from them), so each rank passes back only its own rows, times the world size
    (torchrec and DDP then average over ranks)."""
    return _GatherRows.apply(local, n, pg)


def gather_state(local: dict, device: torch.device, pg: dist.ProcessGroup) -> dict:
    """Whole tensors, on every rank, of a state dict whose sharded entries each rank holds
    parts of (maybe none: torchrec's fused optimizer lists only the tables a rank owns).

    Plain tensors are replicated and copied as they are; for a ShardedTensor every rank writes
    its shards into zeros of the whole size and the ranks sum (shards do not overlap, so this
    is exact). Keys may be any picklable values; the result is ordered by key.
    """
    shapes = {k: (tuple(v.size()), v.metadata().tensor_properties.dtype)
              for k, v in local.items() if isinstance(v, ShardedTensor)}
    everyone: list[dict] = [{} for _ in range(dist.get_world_size(pg))]
    dist.all_gather_object(everyone, shapes, group=pg)
    sharded = {k: v for d in everyone for k, v in d.items()}
    out = {}
    for key in sorted(set(local) | set(sharded), key=repr):  # the same order on every rank
        if key not in sharded:
            out[key] = local[key].detach().clone()
            continue
        size, dtype = sharded[key]
        whole = torch.zeros(size, dtype=dtype, device=device)
        for live, where in local_regions(local[key]) if key in local else []:
            whole[where] = live
        dist.all_reduce(whole, group=pg)
        out[key] = whole
    return out


def region(offsets: list[int], sizes: list[int]) -> tuple[slice, ...]:
    """The slices of a shard inside its whole tensor."""
    return tuple(slice(o, o + s) for o, s in zip(offsets, sizes))


def local_regions(t: torch.Tensor) -> list[tuple[torch.Tensor, tuple[slice, ...]]]:
    """``[(live tensor, its slices in the whole tensor)]`` that this rank holds of an entry
    (all of a plain tensor; the local shards of a ShardedTensor, maybe none)."""
    if not isinstance(t, ShardedTensor):
        return [(t, tuple(slice(None) for _ in t.shape))]
    return [(s.tensor, region(s.metadata.shard_offsets, s.metadata.shard_sizes))
            for s in t.local_shards()]
