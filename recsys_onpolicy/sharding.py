"""The sharding plan of the embedding tables: torchrec's planner, the allowed types, the memory check.

:func:`plan_tables` asks torchrec's ``EmbeddingShardingPlanner`` where each table (or each piece
of a table) lives, given the number of processes, the device and the memory each process may
give to its shards (:class:`ShardingConfig`, the ``model.sharding`` section of a config). Under
several processes the plan is made on rank 0 and broadcast (``collective_plan``), so every rank
shards identically. Every shard uses the fused TBE kernel (``compute_kernel = fused``), so the
sparse optimizer runs inside the backward pass whatever the plan.

Sharding types (``ShardingConfig.types``):

- ``table_wise``: a whole table on one rank (CPU and CUDA).
- ``column_wise``: a table split into column blocks on several ranks (CPU and CUDA). With the
  default ``rowwise_adagrad`` optimizer each column block keeps its *own* row accumulator
  (torchrec's semantics), so training is not the same optimizer as with one process: the
  automatic choice therefore only uses it with ``adagrad`` or ``sgd``, whose state is per entry.
- ``row_wise`` / ``table_row_wise``: blocks of rows on several ranks (within a node for
  table-row-wise). CUDA with NCCL only: torchrec's CPU (gloo) path does not run them.

With one process every table is whole on that process (table-wise) whatever ``types`` says; the
memory check still runs.

Memory check: the planner places shards into ``memory_per_rank_gib`` per rank (default: 70% of
the device's memory; on CPU the physical memory divided among the node's processes). Tables
that cannot fit raise :class:`ShardingPlanError` naming every table, its size with its optimizer
state, the memory given and the ways out.
"""
from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    HardwareConfig,
    KernelConfig,
    PlannerError,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import EmbeddingModuleShardingPlan
from torchrec.optim import RowWiseAdagrad

from simulators.typed_config import ConfigError, StrictModel, first_line

ShardingTypeName = Literal["table_wise", "column_wise", "row_wise", "table_row_wise"]
CUDA_ONLY = ("row_wise", "table_row_wise")
GIB = 1024**3
DEFAULT_MEMORY_SHARE = 0.7  # of the device's memory, when memory_per_rank_gib is not given
# Optimizer state per table row, in multiples of D floats (rowwise_adagrad: one float a row).
OPTIMIZER_STATE = {"rowwise_adagrad": "row", "adagrad": "entry", "sgd": "none"}
# The optimizer class torchrec's storage estimator sizes the state by (it reads the attribute
# ``_optimizer_classes`` of a table's weight; a fused optimizer given in fused_params sets none,
# and the estimator then counts no state at all).
ESTIMATOR_OPTIMIZER = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad,
                       "sgd": torch.optim.SGD}


class ShardingConfig(StrictModel):
    """How the embedding tables are split across processes (``recsys-onpolicy run --nproc N``
    or ``torchrun``); ignored with one process except for the memory check."""

    types: list[ShardingTypeName] | None = None
    """Sharding types the planner may use. None = the ones that keep the one-process optimizer
    exactly: ``table_wise`` (plus ``row_wise`` and ``table_row_wise`` on CUDA), and
    ``column_wise`` too when the sparse optimizer keeps per-entry state (``adagrad``, ``sgd``).
    ``row_wise`` / ``table_row_wise`` need CUDA (NCCL); ``column_wise`` with
    ``rowwise_adagrad`` keeps one accumulator per row *per column block* (see the module
    docstring)."""
    memory_per_rank_gib: float | None = Field(default=None, gt=0.0)
    """Memory (GiB) each process may give to its table shards and their optimizer state. None =
    70% of the device's memory (GPU memory on CUDA; on CPU the physical memory divided among
    the node's processes). Tables that do not fit raise an error naming them."""
    min_column_shard_dim: int | None = Field(default=None, ge=4)
    """Smallest column block of ``column_wise`` shards (a multiple of 4). None = the embedding
    dim divided by the number of processes (one block per process), at least 4."""


class ShardingPlanError(ConfigError):
    """The tables cannot be placed in the stated memory (or with the allowed types); the message
    names tables and fixes. A :class:`ConfigError`: the CLI prints it as one line."""


def allowed_types(cfg: ShardingConfig, device_type: str, sparse_optimizer: str) -> list[str]:
    """The sharding types the planner may choose from (see :attr:`ShardingConfig.types`)."""
    if cfg.types is None:
        types = ["table_wise"] + (list(CUDA_ONLY) if device_type == "cuda" else [])
        if OPTIMIZER_STATE[sparse_optimizer] != "row":
            types.append("column_wise")
        return types
    bad = [t for t in cfg.types if t in CUDA_ONLY]
    if device_type != "cuda" and bad:
        raise ShardingPlanError(
            f"model.sharding.types = {cfg.types}: {bad} need CUDA with NCCL (torchrec's CPU gloo "
            "path cannot run them); on CPU use table_wise and/or column_wise")
    if not cfg.types:
        raise ShardingPlanError("model.sharding.types = []: allow at least one type, e.g. "
                                "[table_wise], or leave it out for the automatic choice")
    return list(dict.fromkeys(cfg.types))


def device_memory_bytes(device: torch.device, local_world_size: int) -> int:
    """The memory one process may use on ``device``: the GPU's memory, or physical RAM / the
    processes on this node."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(1, local_world_size)


def memory_per_rank(cfg: ShardingConfig, device: torch.device, local_world_size: int) -> int:
    """Bytes per rank for table shards (see :attr:`ShardingConfig.memory_per_rank_gib`)."""
    if cfg.memory_per_rank_gib is not None:
        return int(cfg.memory_per_rank_gib * GIB)
    return int(DEFAULT_MEMORY_SHARE * device_memory_bytes(device, local_world_size))


def table_bytes(rows: int, dim: int, sparse_optimizer: str) -> int:
    """fp32 weights of a (rows, dim) table plus its fused optimizer state."""
    state = {"row": rows, "entry": rows * dim, "none": 0}[OPTIMIZER_STATE[sparse_optimizer]]
    return 4 * (rows * dim + state)


Collections = dict[str, EmbeddingBagCollection]  # by the module's attribute name in the model
Plans = dict[str, EmbeddingModuleShardingPlan]  # by the same names


def table_configs(ebcs: Collections) -> list[EmbeddingBagConfig]:
    """Every table of the collections, in order."""
    return [t for ebc in ebcs.values() for t in ebc.embedding_bag_configs()]


def _tables_text(ebcs: Collections, sparse_optimizer: str) -> tuple[str, int, int]:
    """'user 1000000 x 32 = 0.123 GiB, ...', total bytes, largest table bytes."""
    parts, sizes = [], []
    for t in table_configs(ebcs):
        size = table_bytes(t.num_embeddings, t.embedding_dim, sparse_optimizer)
        sizes.append(size)
        parts.append(f"{t.name} {t.num_embeddings} x {t.embedding_dim} = {size / GIB:.4g} GiB")
    return ", ".join(parts), sum(sizes), max(sizes)


def _memory_error(ebcs, sparse_optimizer, per_rank, world, types, reason) -> ShardingPlanError:
    tables, total, _ = _tables_text(ebcs, sparse_optimizer)
    return ShardingPlanError(
        f"the embedding tables do not fit: {reason}. Tables with their {sparse_optimizer} state: "
        f"{tables} (total {total / GIB:.4g} GiB); memory given: {world} process(es) x "
        f"{per_rank / GIB:.4g} GiB (model.sharding.memory_per_rank_gib), sharding types {types}. "
        "Fix: run more processes (--nproc / torchrun), raise model.sharding.memory_per_rank_gib "
        "if the machine has the memory, allow column_wise (or row_wise on CUDA) so a table can "
        "span processes, or shrink the tables (model.user_rows / model.item_rows hash ids into "
        "fewer rows; a smaller model.embedding_dim; sparse_optimizer rowwise_adagrad or sgd "
        "keep less state than adagrad)")


def check_fits(ebcs: Collections, sparse_optimizer: str, per_rank: int, world: int,
               types: list[str]) -> None:
    """Raise :class:`ShardingPlanError` when the tables cannot fit whatever the placement."""
    _, total, largest = _tables_text(ebcs, sparse_optimizer)
    if total > per_rank * world:
        raise _memory_error(ebcs, sparse_optimizer, per_rank, world, types,
                            "together they need more than all processes' memory")
    if types == ["table_wise"] and largest > per_rank:
        raise _memory_error(ebcs, sparse_optimizer, per_rank, world, types,
                            "the largest table alone exceeds one process's memory and "
                            "table_wise keeps every table whole")


def plan_tables(
    ebcs: Collections,
    sharder: EmbeddingBagCollectionSharder,
    cfg: ShardingConfig,
    sparse_optimizer: str,
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
    world_size: int = 1,
    local_world_size: int | None = None,
) -> Plans:
    """The plan of the tables of the collections ``ebcs`` (planned together: they share each
    rank's memory) for the process group ``pg``, or without one (a dry run, e.g. to check
    memory before launching) for ``world_size`` ranks: one module plan per collection, by the
    same names.

    Args:
        ebcs: the collections (usually still on 'meta') by their attribute names in the model.
        sharder: the sharder DMP will use (its fused params set the optimizer).
        cfg: allowed types and memory.
        sparse_optimizer: the fused optimizer's name (sizes its state in the memory check).
        device: the compute device of the ranks.
        pg: the process group; the plan is made on its rank 0 and broadcast.
        world_size, local_world_size: ranks in all and per node, without ``pg`` (defaults:
            1, and the ``LOCAL_WORLD_SIZE`` torchrun sets or all ranks on one node).
    """
    world = world_size if pg is None else dist.get_world_size(pg)
    local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    types = ["table_wise"] if world == 1 else allowed_types(cfg, device.type, sparse_optimizer)
    per_rank = memory_per_rank(cfg, device, local)
    check_fits(ebcs, sparse_optimizer, per_rank, world, types)
    constraints = {
        t.name: ParameterConstraints(
            sharding_types=types, compute_kernels=[EmbeddingComputeKernel.FUSED.value],
            min_partition=_min_partition(cfg, t.embedding_dim, world))
        for t in table_configs(ebcs)
    }
    memory = {"hbm_cap_bytes": per_rank} if device.type == "cuda" else {"ddr_cap_bytes": per_rank}
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world, local_world_size=local, **memory),
        HardwareConfig(), KernelConfig(compute_device=device.type))
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, debug=False,
        storage_reservation=FixedPercentageStorageReservation(0.0))
    holder = nn.ModuleDict(ebcs)  # the planner names each collection's plan by its path
    try:
        with _optimizer_known(ebcs, sparse_optimizer):
            if pg is None or world == 1:
                plan = planner.plan(holder, [sharder])  # the same on every rank: nothing to share
            else:
                plan = planner.collective_plan(holder, [sharder], pg)
    except PlannerError as err:
        raise _memory_error(ebcs, sparse_optimizer, per_rank, world, types,
                            f"torchrec's planner found no placement ({first_line(err)})") from err
    plans = {name: plan.plan[name] for name in ebcs}
    check_ranks(ebcs, plans, sparse_optimizer, per_rank, world, types)
    return plans


@contextlib.contextmanager
def _optimizer_known(ebcs: Collections, sparse_optimizer: str):
    """Let torchrec's storage estimator see the fused optimizer while it plans (it then counts
    the optimizer state of every shard), and take the hint away again before sharding."""
    weights = [ebc.embedding_bags[t.name].weight for ebc in ebcs.values()
               for t in ebc.embedding_bag_configs()]
    for w in weights:
        w._optimizer_classes = [ESTIMATOR_OPTIMIZER[sparse_optimizer]]
    try:
        yield
    finally:
        for w in weights:
            del w._optimizer_classes


def rank_bytes(plans: Plans, sparse_optimizer: str) -> dict[int, int]:
    """Bytes of weights plus optimizer state each rank holds under ``plans`` (a row-wise
    accumulator per row of every column block)."""
    out: dict[int, int] = {}
    for shards in describe_plan(plans).values():
        for rank, _, (rows, cols) in shards:
            out[rank] = out.get(rank, 0) + table_bytes(rows, cols, sparse_optimizer)
    return out


def check_ranks(ebcs: Collections, plans: Plans, sparse_optimizer: str, per_rank: int,
                world: int, types: list[str]) -> None:
    """Raise :class:`ShardingPlanError` when a rank of ``plans`` holds more than ``per_rank``."""
    used = rank_bytes(plans, sparse_optimizer)
    over = {r: b for r, b in sorted(used.items()) if b > per_rank}
    if over:
        held = ", ".join(f"rank {r} {b / GIB:.4g} GiB" for r, b in over.items())
        raise _memory_error(ebcs, sparse_optimizer, per_rank, world, types,
                            f"the best placement found still gives {held}")


def _min_partition(cfg: ShardingConfig, dim: int, world: int) -> int:
    if cfg.min_column_shard_dim is not None:
        return cfg.min_column_shard_dim
    return max(4, dim // world // 4 * 4)


def describe_plan(plans: Plans) -> dict[str, list[tuple[int, list, list]]]:
    """``{table: [(rank, offsets, sizes), ...]}``: where each shard of each table lives, over
    every collection's plan."""
    out = {}
    for table, ps in ((t, ps) for plan in plans.values() for t, ps in plan.items()):
        shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
        out[table] = [(s.placement.rank(), list(s.shard_offsets), list(s.shard_sizes))
                      for s in shards]
    return out
