"""The small GPT: shapes, causality, left-padding invariance, seeded init, config checks."""

import pytest
import torch

from llm_reference.config import GPTConfig
from llm_reference.gpt import GPT, attention_mask, positions_from_mask
from simulators.typed_config import ConfigError, validate

CFG = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16)
V = 7


def model(seed: int = 0) -> GPT:
    return GPT(CFG, V, generator=torch.Generator().manual_seed(seed)).eval()


def test_logits_shape_and_tied_head():
    m = model()
    tokens = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    assert m(tokens).shape == (3, 5, V)
    assert m.lm_head.weight is m.wte.weight
    # 12 * L * C^2 weights + embeddings + biases/norms; counted once per tensor
    assert m.n_params() == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def test_future_tokens_do_not_change_past_logits():
    m = model()
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 6, 6]])
    torch.testing.assert_close(m(a)[:, :3], m(b)[:, :3])
    assert not torch.allclose(m(a)[:, 3:], m(b)[:, 3:])


def test_left_padding_does_not_change_real_positions():
    m = model()
    seq = torch.tensor([[3, 1, 4, 1]])
    padded = torch.tensor([[0, 0, 3, 1, 4, 1]])
    mask = torch.tensor([[False, False, True, True, True, True]])
    torch.testing.assert_close(m(padded, mask)[:, 2:], m(seq), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(m(padded, mask)).all()  # pad queries attend to themselves, no NaN


def test_positions_and_attention_mask_by_hand():
    mask = torch.tensor([[False, True, True]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 1]]
    am = attention_mask(mask)[0, 0].tolist()
    assert am == [
        [True, False, False],  # pad query: itself only
        [False, True, False],  # first real token: itself, not the pad
        [False, True, True],
    ]


def test_initialisation_follows_the_generator():
    a, b, c = model(0), model(0), model(1)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.wte.weight, c.wte.weight)
    # GPT-2 scale: std 0.02 on embeddings
    assert abs(a.wte.weight.std().item() - 0.02) < 0.01


def test_too_long_sequence_names_block_size():
    with pytest.raises(ValueError, match="block_size"):
        model()(torch.zeros(1, 17, dtype=torch.long))


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="n_embd = 10 is not divisible by n_head = 4"):
        validate(GPTConfig, {"n_embd": 10, "n_head": 4})
    with pytest.raises(ConfigError, match="parameters"):
        validate(GPTConfig, {"n_layer": 12, "n_embd": 512, "n_head": 8})
    with pytest.raises(ConfigError, match="n_layer"):
        validate(GPTConfig, {"n_layer": 0})
