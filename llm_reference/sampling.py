"""Generation and sequence log-probabilities for any causal LM (the small GPT or a HF model).

A *language model* here is any callable ``lm(tokens (B, T), mask (B, T) bool, positions (B, T))
-> logits (B, T, V)`` over left-padded batches (the GPT of :mod:`llm_reference.gpt`, or the
adapter in :mod:`llm_reference.hf`), and a *codec* turns text into ids and back (``encode``,
``encode_prompt``, ``decode``, ``eos_id``, ``pad_id``). With these two the regimes never see
which model they train.

- :func:`generate`: sample (or greedy-decode) completions; each draw uses the explicit
  ``torch.Generator`` passed in (probabilities are moved to the generator's device, so a CPU
  generator gives the same draws whatever device the model runs on).
- :func:`completion_logprob`: summed log-probability of given completions, with gradient: the
  ``logp`` (N,) that every loss in :mod:`recsys_onpolicy.objectives` takes.
- :func:`kl_to_base`: KL(pi_0 || pi) on prompts, estimated by sampling completions from pi_0 and
  summing the *exact* per-token KL between the two next-token distributions along each sample
  (chain rule: the expectation of that sum over pi_0 samples is the sequence-level KL; it has
  lower variance than the Monte Carlo log-ratio). Completions are truncated at max_new_tokens,
  so it is the KL of the truncated answer distributions.

The padding id is never sampled (its logit is set to -inf in both sampling and scoring) unless
it equals EOS, as with many Hugging Face tokenizers. Generation recomputes the whole prefix at
every step (no KV cache): simple, and cheap for the short answers of these tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from llm_reference.gpt import positions_from_mask
from recsys_onpolicy.objectives import categorical_kl

LanguageModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(tokens (B, T), mask (B, T) bool, positions (B, T)) -> next-token logits (B, T, V)."""


class TokenCodec(Protocol):
    """Text <-> ids. ``encode_prompt`` encodes a task prompt (a codec may wrap it in a template),
    ``encode`` an answer; ``decode`` stops at EOS."""

    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class Samples:
    """Completions of N prompts.

    Attributes:
        prompts: (N,) prompt texts.
        completion_ids: (N,) token ids of each completion, EOS included when one was produced.
        texts: (N,) answer text before EOS, or None when no EOS came within the budget.
    """

    prompts: list[str]
    completion_ids: list[list[int]]
    texts: list[str | None]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, keep: Sequence[bool]) -> Samples:
        """The samples where ``keep`` is true."""
        idx = [i for i, k in enumerate(keep) if k]
        return Samples(
            [self.prompts[i] for i in idx],
            [self.completion_ids[i] for i in idx],
            [self.texts[i] for i in idx],
        )

    @staticmethod
    def cat(parts: Sequence[Samples]) -> Samples:
        """Concatenate in order."""
        return Samples(
            [p for s in parts for p in s.prompts],
            [c for s in parts for c in s.completion_ids],
            [t for s in parts for t in s.texts],
        )


def answer_samples(codec: TokenCodec, prompts: Sequence[str], answers: Sequence[str]) -> Samples:
    """Samples holding given answers (teacher or reference answers), each closed by EOS."""
    return Samples(
        list(prompts), [codec.encode(a) + [codec.eos_id] for a in answers], list(answers)
    )


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists: -> tokens (B, T) long, mask (B, T) bool (True on real tokens)."""
    if not seqs:
        raise ValueError("left_pad got no sequences")
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            tokens[i, T - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, T - len(s) :] = True
    return tokens.to(device), mask.to(device)


def _ban_pad(logits: torch.Tensor, codec: TokenCodec) -> torch.Tensor:
    """Logits (..., V) with the padding id removed (unless it doubles as EOS)."""
    if codec.pad_id != codec.eos_id and 0 <= codec.pad_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., codec.pad_id] = float("-inf")
    return logits


@torch.no_grad()
def generate(
    lm: LanguageModel,
    codec: TokenCodec,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    gen: torch.Generator | None,
    device: torch.device | str,
    temperature: float = 1.0,
    greedy: bool = False,
    max_batch: int = 1024,
) -> Samples:
    """Complete every prompt: sample at ``temperature`` with ``gen``, or greedy when ``greedy``.

    Returns :class:`Samples`; a row stops at its first EOS. Prompts go through the model in
    chunks of at most ``max_batch``.
    """
    if not greedy and gen is None:
        raise ValueError(
            "sampling needs an explicit torch.Generator (gen=...); only greedy=True may omit it"
        )
    if len(prompts) > max_batch:
        return Samples.cat(
            [
                generate(
                    lm,
                    codec,
                    prompts[i : i + max_batch],
                    max_new_tokens=max_new_tokens,
                    gen=gen,
                    device=device,
                    temperature=temperature,
                    greedy=greedy,
                    max_batch=max_batch,
                )
                for i in range(0, len(prompts), max_batch)
            ]
        )
    tokens, mask = left_pad(
        [codec.encode_prompt(p) for p in prompts], codec.pad_id, device
    )  # (B, T0)
    B = tokens.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=tokens.device)  # (B,)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = lm(tokens, mask, positions_from_mask(mask))[:, -1, :].float()  # (B, V)
        logits = _ban_pad(logits, codec)
        if greedy:
            nxt = logits.argmax(dim=-1)  # (B,)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
            nxt = (
                torch.multinomial(probs.to(gen.device), 1, generator=gen)
                .squeeze(1)
                .to(tokens.device)
            )  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, codec.pad_id), nxt)
        new.append(nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, T + 1)
        mask = torch.cat([mask, ~done[:, None]], dim=1)
        done = done | (nxt == codec.eos_id)
        if bool(done.all()):
            break
    out = torch.stack(new, dim=1).tolist()  # (B, L)
    ids, texts = [], []
    for row, finished in zip(out, done.tolist()):
        if finished:
            row = row[: row.index(codec.eos_id) + 1]
        ids.append(row)
        texts.append(codec.decode(row) if finished else None)
    return Samples(list(prompts), ids, texts)


def _score_batch(
    lm: LanguageModel,
    codec: TokenCodec,
    prompts: Sequence[str],
    completions: Sequence[Sequence[int]],
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits over prompt + completion: -> logits (N, T-1, V) predicting targets (N, T-1), and
    the completion mask (N, T-1) marking the positions whose target is a completion token."""
    seqs = [codec.encode_prompt(p) + list(c) for p, c in zip(prompts, completions)]
    tokens, mask = left_pad(seqs, codec.pad_id, device)  # (N, T)
    T = tokens.shape[1]
    lens = torch.tensor([len(c) for c in completions], device=tokens.device)  # (N,)
    col = torch.arange(T, device=tokens.device)[None, :]  # (1, T)
    is_completion = col >= (T - lens[:, None])  # (N, T): the last len(c) columns
    logits = lm(tokens, mask, positions_from_mask(mask))  # (N, T, V)
    return _ban_pad(logits[:, :-1].float(), codec), tokens[:, 1:], is_completion[:, 1:]


def completion_logprob(
    lm: LanguageModel,
    codec: TokenCodec,
    samples: Samples,
    device: torch.device | str,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Summed log-probability of each completion given its prompt, with gradient: (N,).

    ``temperature`` scales the logits first (the RL regimes score their samples under the same
    tempered policy that drew them, so the update is exactly on-policy).
    """
    logits, targets, cmask = _score_batch(
        lm, codec, samples.prompts, samples.completion_ids, device
    )
    logp = torch.log_softmax(logits / temperature, dim=-1)  # (N, T-1, V)
    tok = logp.gather(-1, targets[..., None]).squeeze(-1)  # (N, T-1)
    return torch.where(cmask, tok, torch.zeros_like(tok)).sum(dim=1)  # (N,); pads may hold -inf


@torch.no_grad()
def kl_to_base(
    lm: LanguageModel,
    base: LanguageModel,
    codec: TokenCodec,
    prompts: Sequence[str],
    *,
    n_samples: int,
    max_new_tokens: int,
    gen: torch.Generator,
    device: torch.device | str,
    max_batch: int = 1024,
) -> float:
    """KL(pi_0 || pi) in nats per prompt, mean over ``prompts`` (see the module docstring).

    Completions y ~ pi_0 at temperature 1; for each, sum over its tokens of the exact
    KL(pi_0(. | prefix) || pi(. | prefix)); mean over all samples.
    """
    rep = [p for p in prompts for _ in range(n_samples)]
    samples = generate(
        base, codec, rep, max_new_tokens=max_new_tokens, gen=gen, device=device, max_batch=max_batch
    )
    total = 0.0
    for i in range(0, len(samples), max_batch):
        prompts_i, ids_i = (
            samples.prompts[i : i + max_batch],
            samples.completion_ids[i : i + max_batch],
        )
        base_logits, _, cmask = _score_batch(base, codec, prompts_i, ids_i, device)
        logits, _, _ = _score_batch(lm, codec, prompts_i, ids_i, device)
        per_token = categorical_kl(base_logits, logits)  # (n, T-1)
        total += float((per_token * cmask).sum())
    return total / len(samples)


@torch.no_grad()
def greedy_accuracy(
    lm: LanguageModel,
    codec: TokenCodec,
    prompts: Sequence[str],
    reward: Callable[[str, str | None], float],
    *,
    max_new_tokens: int,
    device: torch.device | str,
    max_batch: int = 1024,
) -> float:
    """Mean 0/1 reward of greedy completions."""
    s = generate(
        lm,
        codec,
        list(prompts),
        max_new_tokens=max_new_tokens,
        gen=None,
        device=device,
        greedy=True,
        max_batch=max_batch,
    )
    return sum(reward(p, t) for p, t in zip(s.prompts, s.texts)) / len(prompts)
