"""Tests of recsys_onpolicy/sharding.py: allowed types, table sizes, torchrec's plans for two
ranks (planned without processes: the planner's dry run), and the memory errors.

The plans of a real two-process job (and its shards) are checked in test_distributed.py.
"""
from __future__ import annotations

import pytest
import torch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise

from recsys_onpolicy.distributed import fused_params
from recsys_onpolicy.model import TABLES, ModelConfig, Scorer, TrainableScorer
from recsys_onpolicy.sharding import (
    ShardingConfig,
    ShardingPlanError,
    allowed_types,
    describe_plan,
    plan_tables,
    rank_bytes,
    table_bytes,
)
from simulators.typed_config import ConfigError, validate

CPU = torch.device("cpu")
ROWS = {"user": 200_000, "item": 50_000, "topic": 10}  # large enough that I/O buffers are small


def ebc_and_sharder(dim: int = 32, optimizer: str = "rowwise_adagrad"):
    cfg = ModelConfig(embedding_dim=dim, device="cpu", sparse_optimizer=optimizer)
    scorer = Scorer(cfg, ROWS["user"], ROWS["item"], ROWS["topic"], CPU)
    return (scorer.collections(),
            EmbeddingBagCollectionSharder(fused_params=fused_params(optimizer, 0.1, 1e-8)))


def dry_plan(sharding: dict, world: int = 2, dim: int = 32, optimizer: str = "rowwise_adagrad"):
    ebcs, sharder = ebc_and_sharder(dim, optimizer)
    return plan_tables(ebcs, sharder, ShardingConfig(**sharding), optimizer, CPU, world_size=world)


# ---- which types ---------------------------------------------------------------------------

def test_automatic_types_keep_the_one_process_optimizer():
    auto = ShardingConfig()
    assert allowed_types(auto, "cpu", "rowwise_adagrad") == ["table_wise"]
    assert allowed_types(auto, "cpu", "adagrad") == ["table_wise", "column_wise"]
    assert allowed_types(auto, "cpu", "sgd") == ["table_wise", "column_wise"]
    assert allowed_types(auto, "cuda", "rowwise_adagrad") == [
        "table_wise", "row_wise", "table_row_wise"]
    explicit = ShardingConfig(types=["column_wise", "table_wise", "column_wise"])
    assert allowed_types(explicit, "cpu", "rowwise_adagrad") == ["column_wise", "table_wise"]


def test_row_wise_on_cpu_and_empty_types_are_errors_naming_the_field():
    with pytest.raises(ShardingPlanError, match=r"model\.sharding\.types.*CUDA"):
        allowed_types(ShardingConfig(types=["table_wise", "row_wise"]), "cpu", "sgd")
    with pytest.raises(ShardingPlanError, match=r"model\.sharding\.types = \[\]"):
        allowed_types(ShardingConfig(types=[]), "cpu", "sgd")


def test_config_validates_types_and_memory():
    cfg = validate(ModelConfig, {"sharding": {"types": ["column_wise"], "memory_per_rank_gib": 2}})
    assert cfg.sharding.types == ["column_wise"] and cfg.sharding.memory_per_rank_gib == 2.0
    with pytest.raises(ConfigError, match="sharding.types"):
        validate(ModelConfig, {"sharding": {"types": ["diagonal"]}})
    with pytest.raises(ConfigError, match="memory_per_rank_gib"):
        validate(ModelConfig, {"sharding": {"memory_per_rank_gib": 0}})
    assert all(f.description for f in ShardingConfig.model_fields.values())


def test_table_bytes_count_weights_and_optimizer_state():
    assert table_bytes(10, 8, "sgd") == 4 * 80
    assert table_bytes(10, 8, "rowwise_adagrad") == 4 * (80 + 10)  # one accumulator per row
    assert table_bytes(10, 8, "adagrad") == 4 * (80 + 80)  # one per entry


# ---- plans ---------------------------------------------------------------------------------

def test_one_process_plan_is_the_plain_table_wise_plan():
    """With one process the planner must reproduce the hand-made table-wise plan the model
    used before sharding existed (same TBE grouping: single-process runs are unchanged)."""
    ebcs, sharder = ebc_and_sharder()
    plans = plan_tables(ebcs, sharder, ShardingConfig(types=["column_wise"]), "rowwise_adagrad",
                        CPU)
    assert set(plans) == set(ebcs) == {"request_ebc", "item_ebc"}
    for name, ebc in ebcs.items():
        tables = [t.name for t in ebc.embedding_bag_configs()]
        hand = construct_module_sharding_plan(
            ebc, {t: table_wise(rank=0, compute_kernel="fused") for t in tables}, sharder=sharder,
            local_size=1, world_size=1, device_type="cpu")
        assert dict(plans[name]) == dict(hand)


def test_table_wise_plan_puts_whole_tables_on_both_ranks():
    shards = describe_plan(dry_plan({}))
    assert set(shards) == set(TABLES)
    for table, placed in shards.items():
        assert len(placed) == 1  # whole table on one rank
        _, offsets, sizes = placed[0]
        assert offsets == [0, 0] and sizes == [ROWS[table], 32]
    assert {placed[0][0] for placed in shards.values()} == {0, 1}


def test_column_wise_plan_splits_every_table_into_column_blocks():
    shards = describe_plan(dry_plan({"types": ["column_wise"]}))
    for table, placed in shards.items():
        assert sorted(placed) == [(0, [0, 0], [ROWS[table], 16]), (1, [0, 16], [ROWS[table], 16])]
    # a smaller block size gives more blocks, still covering all 32 columns
    blocks = describe_plan(dry_plan({"types": ["column_wise"], "min_column_shard_dim": 8}))
    for placed in blocks.values():
        assert sum(sizes[1] for _, _, sizes in placed) == 32


# ---- memory --------------------------------------------------------------------------------

def test_tables_larger_than_all_memory_name_tables_sizes_memory_and_fix():
    total = sum(table_bytes(r, 32, "rowwise_adagrad") for r in ROWS.values()) / 1024**3
    with pytest.raises(ShardingPlanError) as err:
        dry_plan({"memory_per_rank_gib": total / 4})  # 2 ranks x a quarter: half of what's needed
    msg = str(err.value)
    for text in ("user 200000 x 32", "item 50000 x 32", "topic 10 x 32", "2 process(es)",
                 "model.sharding.memory_per_rank_gib", "--nproc", "user_rows"):
        assert text in msg


def test_table_wise_cannot_hold_a_table_larger_than_one_rank():
    user = table_bytes(ROWS["user"], 32, "rowwise_adagrad") / 1024**3
    with pytest.raises(ShardingPlanError, match="largest table alone.*column_wise"):
        dry_plan({"memory_per_rank_gib": 0.9 * user})  # fits in 2 ranks, not whole in one
    # column-wise halves fit
    shards = describe_plan(dry_plan({"memory_per_rank_gib": 0.9 * user,
                                     "types": ["table_wise", "column_wise"]}))
    assert len(shards["user"]) == 2


@pytest.mark.filterwarnings("ignore:the topic table has")  # 100k topics, on purpose
def test_planner_failure_is_reported_with_the_tables():
    """Fits in total and table by table, but three equal tables cannot be split table-wise
    over two ranks: the planner finds no placement and the error still names everything."""
    cfg = ModelConfig(embedding_dim=32, device="cpu")
    ebcs = Scorer(cfg, 100_000, 100_000, 100_000, CPU).collections()  # 3 tables of one size
    _, sharder = ebc_and_sharder()
    each = table_bytes(100_000, 32, "rowwise_adagrad") / 1024**3
    with pytest.raises(ShardingPlanError, match="planner found no placement.*user 100000 x 32"):
        plan_tables(ebcs, sharder, ShardingConfig(memory_per_rank_gib=1.6 * each),
                    "rowwise_adagrad", CPU, world_size=2)


@pytest.mark.parametrize("types", [["table_wise"], ["table_wise", "column_wise"]])
def test_optimizer_state_counts_on_every_rank(types):
    """Adagrad keeps a state as large as the weights. Tables of 90k, 90k and 30k rows x 32
    need 53.8 MB in all with it: 27 MB per rank passes the total check, but no placement puts
    under 27 MB on each rank (torchrec's estimator, given the optimizer only through
    fused_params, would count no state and accept one)."""
    cfg = ModelConfig(embedding_dim=32, device="cpu", sparse_optimizer="adagrad")
    ebcs = Scorer(cfg, 90_000, 90_000, 30_000, CPU).collections()
    _, sharder = ebc_and_sharder(optimizer="adagrad")
    with pytest.raises(ShardingPlanError):
        plan_tables(ebcs, sharder, ShardingConfig(memory_per_rank_gib=27e6 / 1024**3, types=types),
                    "adagrad", CPU, world_size=2)
    per_rank = 40e6
    plan = plan_tables(ebcs, sharder, ShardingConfig(memory_per_rank_gib=per_rank / 1024**3,
                                                    types=types), "adagrad", CPU, world_size=2)
    used = rank_bytes(plan, "adagrad")
    assert sum(used.values()) == sum(table_bytes(r, 32, "adagrad")
                                     for r in (90_000, 90_000, 30_000))
    assert max(used.values()) <= per_rank
    assert not any(hasattr(b.weight, "_optimizer_classes")
                   for ebc in ebcs.values() for b in ebc.embedding_bags.values())


def test_trainable_scorer_refuses_tables_beyond_the_stated_memory():
    cfg = ModelConfig(embedding_dim=8, device="cpu", sharding={"memory_per_rank_gib": 1e-6})
    with pytest.raises(ShardingPlanError, match=r"user 40 x 8.*1 process\(es\)"):
        TrainableScorer(cfg, 40, 30, 5, torch.Generator().manual_seed(0))
