"""A small GPT in plain torch (nanoGPT-style): token + position embeddings, pre-norm blocks of
causal self-attention and an MLP, a final LayerNorm and a head tied to the token embedding.

Shapes: B = sequences, T = tokens, C = n_embd, H = heads, V = vocabulary.

Batches are *left-padded* (prompts of different lengths end at the same column, so sampling
appends one column per step). ``mask`` marks real tokens; positions count real tokens only, so
a prompt starts at position 0 whatever its padding. Padding keys are never attended to; a padding
query attends to itself only (its output is ignored) so no softmax row is empty.

Initialisation draws from an explicit ``torch.Generator`` (normal(0, 0.02), residual projections
scaled by 1/sqrt(2 n_layer) as in GPT-2), so the same seed gives the same model on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_reference.config import GPTConfig


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting real tokens only: (B, T) bool -> (B, T) long (0 at pads)."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """Causal mask that also hides padding keys: (B, T) bool -> (B, 1, T, T) bool, True = attend."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=mask.device)  # (T, T)
    keys = mask[:, None, :] | eye[None]  # (B, T, T): real keys, plus self for pad queries
    return (causal[None] & keys)[:, None]  # (B, 1, T, T)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The small LM: ``GPT(cfg, vocab_size, generator)(tokens, mask)`` -> logits (B, T, V)."""

    def __init__(
        self, cfg: GPTConfig, vocab_size: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self._init_weights(generator if generator is not None else torch.Generator().manual_seed(0))

    def _init_weights(self, gen: torch.Generator) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:  # LayerNorm gains
                nn.init.ones_(p)
            else:
                std = (
                    0.02 / math.sqrt(2 * self.cfg.n_layer)
                    if name.endswith("c_proj.weight")
                    else 0.02
                )
                # draw on CPU with the generator, then copy (the same weights on any device)
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def n_params(self) -> int:
        """Number of distinct parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the next token at every position.

        Args:
            tokens: (B, T) ids, left-padded.
            mask: (B, T) bool, True on real tokens; None means no padding.
            positions: (B, T) positions; None derives them from ``mask``.
        Returns:
            (B, T, V) logits; row t predicts token t + 1.
        """
        B, T = tokens.shape
        if T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {T} tokens exceeds block_size = {self.cfg.block_size}; "
                "raise model.block_size"
            )
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        if positions is None:
            positions = positions_from_mask(mask)
        x = self.wte(tokens) + self.wpe(positions)  # (B, T, C)
        am = attention_mask(mask)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, am)
        return self.lm_head(self.ln_f(x))  # (B, T, V)
