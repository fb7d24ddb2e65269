"""Tests of recsys_onpolicy/checkpoint.py: bit-exact resume on CPU, atomic writes, plain payloads."""
from __future__ import annotations

import pytest
import torch

from recsys_onpolicy.checkpoint import (
    generator_states,
    load_checkpoint,
    restore_generators,
    save_checkpoint,
)
from recsys_onpolicy.model import ModelConfig, TrainableScorer
from recsys_onpolicy.objectives import pointwise_bce

U, I, T = 40, 30, 5
CFG = ModelConfig(device="cpu", embedding_dim=8, head_width=16, sparse_lr=0.1, dense_lr=1e-2)


def train(model: TrainableScorer, data_gen: torch.Generator, steps: int) -> None:
    """``steps`` BCE steps on fresh random batches drawn from ``data_gen``."""
    for _ in range(steps):
        users = torch.randint(0, U, (8,), generator=data_gen)
        history = torch.randint(-1, I, (8, 4), generator=data_gen)
        items = torch.randint(0, I, (8, 3), generator=data_gen)
        topics = torch.randint(0, T, (8, 3), generator=data_gen)
        clicks = torch.bernoulli(torch.full((8, 3), 0.3), generator=data_gen)
        model.step(pointwise_bce(model.score(users, history, items, topics).flatten(),
                                 clicks.flatten()))


def flat_state(model: TrainableScorer) -> dict[str, torch.Tensor]:
    """Every tensor of the training state (tables, head, fused and Adam state), cloned."""
    leaves, _ = torch.utils._pytree.tree_flatten_with_path(model.state_dict())
    return {torch.utils._pytree.keystr(p): v.clone() for p, v in leaves if torch.is_tensor(v)}


def test_resume_is_bit_exact(tmp_path):
    data_gen = torch.Generator().manual_seed(1)
    model = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(0))
    train(model, data_gen, 3)
    save_checkpoint(tmp_path / "ckpt.pt", model, {"day": 3, "rng": generator_states({"data": data_gen})})
    train(model, data_gen, 4)
    want = flat_state(model)

    # A fresh model with other initial weights and a data generator in another state.
    resumed = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(99))
    data_gen2 = torch.Generator().manual_seed(123)
    extra = load_checkpoint(tmp_path / "ckpt.pt", resumed)
    assert extra["day"] == 3
    restore_generators({"data": data_gen2}, extra["rng"])
    train(resumed, data_gen2, 4)
    got = flat_state(resumed)

    assert got.keys() == want.keys()
    assert any("momentum1" in k for k in got) and any("exp_avg_sq" in k for k in got)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    probe = torch.Generator().manual_seed(5)
    x = (torch.arange(4), torch.full((4, 2), -1), torch.randint(0, I, (4, 6), generator=probe),
         torch.randint(0, T, (4, 6), generator=probe))
    with torch.no_grad():
        assert torch.equal(resumed.score(*x), model.score(*x))


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    model = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(0))
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, model, {"note": "x", "values": [1, 2.5, None]})
    save_checkpoint(path, model, {"note": "y"})  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp files left
    payload = torch.load(path, weights_only=True)
    assert payload["extra"] == {"note": "y"}
    assert payload["model_config"]["embedding_dim"] == 8


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(0))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"day": 1})

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model, {"day": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path, model) == {"day": 1}


def test_extra_must_be_plain(tmp_path):
    model = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"extra\['gen'\] is a Generator.*get_state"):
        save_checkpoint(tmp_path / "c.pt", model, {"gen": torch.Generator()})
    assert not (tmp_path / "c.pt").exists()


def test_loading_into_another_architecture_fails_clearly(tmp_path):
    model = TrainableScorer(CFG, U, I, T, torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "c.pt", model, {})
    deeper = TrainableScorer(CFG.model_copy(update={"head_depth": 3}), U, I, T,
                             torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="missing.*mlp.5.weight"):
        load_checkpoint(tmp_path / "c.pt", deeper)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt", model)


def test_restore_generators_needs_every_name():
    with pytest.raises(KeyError, match="world"):
        restore_generators({"world": torch.Generator()}, {"data": torch.Generator().get_state()})


def test_a_damaged_state_file_is_named_with_the_cause_cut_at_a_word(tmp_path):
    from recsys_onpolicy.run_state import load_state
    from simulators.typed_config import ConfigError, first_line

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ConfigError, match="checkpoint.pt cannot be read"):
        load_state(path)
    long = ValueError("first " + "wordy " * 60 + "\nsecond line")
    cut = first_line(long)
    assert cut.endswith(" ...") and len(cut) <= 164 and "second" not in cut
    assert all(w in ("first", "wordy", "...") for w in cut.split())  # no word cut in two
    assert first_line(ValueError("short")) == "short"
    assert first_line(KeyError()) == "KeyError"  # no message: the type
