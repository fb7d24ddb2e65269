"""Generation, completion log-probs and the KL(pi_0 || pi) estimator, against values computed
by hand or by brute-force enumeration."""

import itertools

import pytest
import torch

from llm_reference.config import GPTConfig
from llm_reference.gpt import GPT
from llm_reference.sampling import (
    Samples,
    answer_samples,
    completion_logprob,
    generate,
    greedy_accuracy,
    kl_to_base,
    left_pad,
)
from llm_reference.tokenizer import CharTokenizer

TOK = CharTokenizer("ab")  # ids: pad 0, eos 1, a 2, b 3
CFG = GPTConfig(block_size=12, n_layer=1, n_head=2, n_embd=16)


def tiny(seed: int, sharpen: float = 1.0) -> GPT:
    m = GPT(CFG, TOK.vocab_size, generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():
        m.wte.weight.mul_(sharpen)  # larger embeddings -> peaked next-token distributions
    return m


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_left_pad_by_hand():
    tokens, mask = left_pad([[5, 6], [7]], pad_id=0, device="cpu")
    assert tokens.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[True, True], [False, True]]


def manual_logprob(model: GPT, prompt: str, completion: list[int]) -> float:
    """One sequence, no padding, token by token, pad banned (the sampler's distribution)."""
    ids = TOK.encode(prompt)
    total = 0.0
    for tok in completion:
        logits = model(torch.tensor([ids]))[0, -1].clone()
        logits[TOK.pad_id] = float("-inf")
        total += torch.log_softmax(logits, -1)[tok].item()
        ids = ids + [tok]
    return total


def test_completion_logprob_matches_token_by_token_with_mixed_lengths():
    m = tiny(0, sharpen=20.0)
    s = Samples(["a", "abba", "ba"], [[2, 1], [3], [3, 3, 1]], ["a", "b", "bb"])
    got = completion_logprob(m, TOK, s, "cpu")
    want = [manual_logprob(m, p, c) for p, c in zip(s.prompts, s.completion_ids)]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_completion_logprob_temperature_scales_logits():
    m = tiny(0, sharpen=20.0)
    s = answer_samples(TOK, ["ab"], ["b"])  # completion: b, EOS
    logits = m(torch.tensor([TOK.encode("ab") + [3]]))[
        0, -2:
    ].clone()  # rows predicting b, then EOS
    logits[:, TOK.pad_id] = float("-inf")
    want = (
        torch.log_softmax(logits / 0.5, -1)[0, 3] + torch.log_softmax(logits / 0.5, -1)[1, 1]
    ).item()
    assert completion_logprob(m, TOK, s, "cpu", temperature=0.5).item() == pytest.approx(
        want, abs=1e-5
    )


def test_greedy_generation_matches_manual_argmax():
    m = tiny(1, sharpen=20.0)
    out = generate(m, TOK, ["ab", "b"], max_new_tokens=4, gen=None, device="cpu", greedy=True)
    for prompt, ids in zip(out.prompts, out.completion_ids):
        seq = TOK.encode(prompt)
        want = []
        for _ in range(4):
            logits = m(torch.tensor([seq]))[0, -1].clone()
            logits[TOK.pad_id] = float("-inf")
            nxt = int(logits.argmax())
            want.append(nxt)
            seq.append(nxt)
            if nxt == TOK.eos_id:
                break
        assert ids == want


def test_chunked_greedy_generation_equals_one_batch():
    m = tiny(1, sharpen=20.0)
    prompts = ["a", "ab", "bba", "b", "aab"]
    one = generate(m, TOK, prompts, max_new_tokens=4, gen=None, device="cpu", greedy=True)
    chunked = generate(
        m, TOK, prompts, max_new_tokens=4, gen=None, device="cpu", greedy=True, max_batch=2
    )
    assert chunked.completion_ids == one.completion_ids and chunked.prompts == prompts


def test_sampling_follows_the_generator_and_never_emits_pad():
    m = tiny(2, sharpen=5.0)
    a = generate(m, TOK, ["a"] * 64, max_new_tokens=5, gen=gen(7), device="cpu")
    b = generate(m, TOK, ["a"] * 64, max_new_tokens=5, gen=gen(7), device="cpu")
    c = generate(m, TOK, ["a"] * 64, max_new_tokens=5, gen=gen(8), device="cpu")
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids
    for ids, text in zip(a.completion_ids, a.texts):
        assert TOK.pad_id not in ids
        if text is None:  # no EOS within the budget
            assert len(ids) == 5 and TOK.eos_id not in ids
        else:
            assert ids[-1] == TOK.eos_id and TOK.decode(ids) == text


def test_sampling_needs_a_generator():
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        generate(tiny(0), TOK, ["a"], max_new_tokens=2, gen=None, device="cpu")


def test_kl_to_base_is_zero_for_the_same_model():
    m = tiny(3, sharpen=10.0)
    assert kl_to_base(
        m, m, TOK, ["a", "bb"], n_samples=4, max_new_tokens=3, gen=gen(), device="cpu"
    ) == pytest.approx(0.0, abs=1e-6)


def test_kl_to_base_matches_brute_force_enumeration():
    base, other = tiny(4, sharpen=2.0), tiny(5, sharpen=5.0)
    # every completion of at most 2 tokens (pad banned; EOS ends a sequence)
    seqs = [[1]] + [[x, y] for x, y in itertools.product([2, 3], [1, 2, 3])]
    s = Samples(["a"] * len(seqs), seqs, [None] * len(seqs))
    with torch.no_grad():
        lp0, lp = completion_logprob(base, TOK, s, "cpu"), completion_logprob(other, TOK, s, "cpu")
    assert lp0.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    exact = (lp0.exp() * (lp0 - lp)).sum().item()
    est = kl_to_base(
        other,
        base,
        TOK,
        ["a"],
        n_samples=3000,
        max_new_tokens=2,
        gen=gen(),
        device="cpu",
        max_batch=1000,
    )
    assert exact > 0.05
    assert est == pytest.approx(exact, rel=0.08)


def test_greedy_accuracy_counts_exact_rewards():
    m = tiny(6, sharpen=20.0)
    out = generate(m, TOK, ["a", "b", "ab"], max_new_tokens=3, gen=None, device="cpu", greedy=True)
    targets = dict(zip(out.prompts, out.texts))
    targets["b"] = "impossible"
    acc = greedy_accuracy(
        m,
        TOK,
        ["a", "b", "ab"],
        lambda p, t: float(t == targets[p]),
        max_new_tokens=3,
        device="cpu",
    )
    assert acc == pytest.approx(2 / 3)
