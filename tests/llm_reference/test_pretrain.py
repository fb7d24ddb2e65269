"""Pretraining: data mixture, lr schedule, the config hash and the atomic, weights-only cache."""

import pytest
import torch
from lightning.fabric import Fabric

from llm_reference.config import PretrainConfig, smoke_config
from llm_reference.pretrain import base_hash, load_or_pretrain, lr_at, pretrain_batch
from llm_reference.sampling import answer_samples, completion_logprob
from llm_reference.tasks import build_suite, split_of
from llm_reference.tokenizer import CharTokenizer

TOK = CharTokenizer()
FABRIC = Fabric(accelerator="cpu", devices=1, precision="32-true")


def test_lr_schedule_by_hand():
    p = PretrainConfig(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, p) == pytest.approx(0.1)
    assert lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(10, p) == pytest.approx(1.0)
    assert lr_at(60, p) == pytest.approx(0.1 + 0.5 * 0.9)  # half-way: cosine at pi/2
    assert lr_at(110, p) == pytest.approx(0.1)


def test_pretrain_batch_mixture_and_split():
    cfg = smoke_config()
    suite = build_suite(cfg.tasks)
    g = torch.Generator().manual_seed(0)
    none = pretrain_batch(suite, TOK, 64, 0.0, g)
    assert len(none) == 64 and not any(p.startswith("N") for p in none.prompts)
    assert {p[0] for p in none.prompts} == {"A", "C"}
    only = pretrain_batch(suite, TOK, 32, 1.0, g)
    assert all(p.startswith("N") for p in only.prompts)
    for p, text, ids in zip(only.prompts, only.texts, only.completion_ids):
        assert text == suite.target.answer(p)  # base style
        assert ids[-1] == TOK.eos_id
        assert split_of(p, cfg.tasks.eval_share) == "train"


def test_hash_covers_what_shapes_the_base_only():
    cfg = smoke_config()
    h = base_hash(cfg)
    assert base_hash(smoke_config(pretrain={"steps": 31, "batch_size": 32, "warmup": 5})) != h
    assert (
        base_hash(smoke_config(model={"block_size": 24, "n_layer": 1, "n_head": 2, "n_embd": 32}))
        != h
    )
    assert (
        base_hash(
            smoke_config(
                tasks={"n_eval": 20, "eval_seed": 9, "non_target": ["addition", "copying"]}
            )
        )
        == h
    )
    assert base_hash(smoke_config(runtime={"verbose": True})) == h


def test_cache_writes_once_then_loads_the_same_weights(tmp_path):
    cfg = smoke_config(runtime={"cache_dir": str(tmp_path), "verbose": False})
    suite = build_suite(cfg.tasks)
    # held-out pairs: the answer NLL before pretraining, from the same initialisation
    prompts = suite.eval_prompts["copying"][:8]
    pairs = answer_samples(TOK, prompts, [suite.non_target[1].answer(p) for p in prompts])
    first, path, cached = load_or_pretrain(cfg, suite, FABRIC)
    assert not cached and path.parent == tmp_path and path.name == f"base-{base_hash(cfg)}.pt"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    blob = torch.load(path, weights_only=True)
    assert blob["hash"] == base_hash(cfg) and blob["n_params"] == first.n_params()
    second, path2, cached2 = load_or_pretrain(cfg, suite, FABRIC)
    assert cached2 and path2 == path
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a.cpu(), b.cpu()), k
    from llm_reference.gpt import GPT

    init = GPT(
        cfg.model, TOK.vocab_size, generator=torch.Generator().manual_seed(cfg.pretrain.seed)
    )
    with torch.no_grad():
        assert (
            completion_logprob(second, TOK, pairs, "cpu").mean()
            > completion_logprob(init, TOK, pairs, "cpu").mean()
        )
