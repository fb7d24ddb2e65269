"""The click scorer: torchrec embedding tables plus a dense interaction head, and its trainer.

Three parts, top to bottom:

- :class:`ModelConfig`: the knobs. Sparse capacity = embedding dim and table sizes (a table with
  fewer rows than ids hashes the ids into it); dense capacity = head width and depth.
- :class:`Scorer`: a plain ``nn.Module``. ``forward(users (B,), history (B,H), candidates (B,C),
  candidate_topics (B,C)) -> (B,C)`` click logits. Three tables in two torchrec
  ``EmbeddingBagCollection`` modules: ``item_ebc`` holds ``item`` (one feature: a bag per candidate
  and a click-history bag per request, a mean over the user's recent clicks), ``request_ebc``
  holds ``user`` and ``topic`` (a bag per request, and one per topic-table row). The user side
  (user row, history bag, and its share of the head's first layer) is computed once per
  request, not once per candidate.
- :class:`TrainableScorer`: the scorer wrapped in torchrec's ``DistributedModelParallel``
  (world size 1 unless a bigger process group exists), so that the tables live in fbgemm's fused
  TBE kernel and are updated *inside* backward by a fused sparse optimizer (row-wise Adagrad by
  default) without ever building a dense gradient of a whole table; dense parameters are trained
  by ``torch.optim.Adam``. Callers pass plain tensors; no KJT or DMP detail leaks out.

The head (``W`` = head width, ``D`` = embedding dim)::

    u = E_user[user]               (B, D)      h = mean E_item[history]   (B, D)  (if history_bag)
    i = E_item[candidate]          (B, C, D)   t = E_topic[topic]         (B, C, D)
    z0 = A [u, h]  +  Bc [i, t, u*i, u*t, h*i, h*t]  + b      (B, C, W)   A[u, h] once per request
    z  = ReLU -> (Linear W->W, ReLU) x (depth - 1) -> Linear W->1          (B, C)

which equals one linear layer over the concatenation of all those features followed by an MLP;
the split only avoids repeating the user part C times.

How it is computed (speed; the function is the one above, up to float rounding):

- Per request the candidate term is regrouped as ``M [i, t]`` with one (W, 2D) matrix
  ``M = [Bi + Bui diag(u) + Bhi diag(h) | Bt + But diag(u) + Bht diag(h)]``, so scoring C
  candidates is one batched GEMM and no (B, C, 6D) product features exist (when C >= D;
  below that, e.g. training on the K served items, the products are cheaper: :meth:`Scorer.head`).
- Requests go through the head in chunks of ``HEAD_CHUNK_ROWS`` candidates (by head dtype),
  whose activations stay in the CPU cache; without grad, :meth:`TrainableScorer.score` also
  cuts big batches into pieces of ``SCORE_CHUNK_ROWS`` candidates (embedding lookups included).
- The embedding lookups are laid out for fbgemm's CPU kernels (:func:`item_features`,
  :func:`request_features`), which cost per bag, empty or not, and whose fused row-wise
  Adagrad backward is multi-threaded only for a table that one feature reads: the item table
  has one feature with a bag per candidate and per history, in a collection of its own, so
  that the user and topic bags (one per request, one per topic row) need not be as many.
  :class:`HeadInputs` gathers the head's inputs from the two outputs (in the head's dtype)
  and writes their gradients into one buffer each.
- ``head_dtype: bfloat16`` (opt-in) runs the head's products under ``torch.autocast`` in
  bfloat16; weights, optimizer state, tables and the returned logits stay float32.

Measured back to back against the plain concatenation head on the shared 2-core CPU machine
(1M users x 100k items, D = 32, W = 64, C = 100, load ~1.7): scoring a serving batch of 4096
requests 0.35 s -> 0.15 s wall (0.56 -> 0.20 CPU s); a GRPO update of 512 requests 0.093 s ->
0.075 s (0.152 -> 0.099 CPU s); BCE training on served items (C = K = 10) unchanged.
The lookup layout, against the earlier one (one collection, candidates in rows of 10 slots read
by ten features of the item table; same machine): fbgemm's backward of a 512-request GRPO
update's lookups 5.4-6.3 -> 2.7-3.0 ms, its forward kernels 1.2-1.5 -> 0.8-0.9 ms (realistic
ids, 2 threads, profiled inside real updates). M as one batched product (:meth:`Scorer.head`),
forward + backward of one head chunk: 7.2 -> 4.6 ms (327 requests, bfloat16) and 2.35 -> 1.91
ms (81 requests, float32), medians.

Id hashing (sparse capacity): a table with ``rows`` < ``n_ids`` maps an id ``x`` to
``((a * x + b) mod p) mod rows`` with ``p = 2**31 - 1`` (the Carter-Wegman universal family),
with fixed, per-table constants ``a, b`` (so user and item collisions are unrelated). Unlike
``x mod rows``, ids that are ``rows`` apart do not systematically collide.

Initialisation draws from an explicit CPU ``torch.Generator`` in a fixed order (tables ``user``,
``item``, ``topic``, then dense parameters by name), so a :class:`Scorer` and a
:class:`TrainableScorer` built from equal generator states hold identical weights, on any device.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.modules.embedding_configs import PoolingType

from recsys_onpolicy.distributed import (
    ensure_process_group,
    fused_params,
    gather_rows,
    gather_state,
    local_device,
    local_regions,
    local_rows,
    shard_tables,
)
from recsys_onpolicy.sharding import ShardingConfig, plan_tables
from simulators.expect import expect
from simulators.shard import largest
from simulators.typed_config import StrictModel

SparseOptimizer = Literal["rowwise_adagrad", "adagrad", "sgd"]

# Universal hashing ((a * x + b) mod p) mod rows; a < p keeps a * x < 2**62 in int64.
HASH_PRIME = 2**31 - 1
HASH_CONSTANTS = {  # table -> (a, b); a are Fishman-Moore multipliers for p = 2**31 - 1
    "user": (950_706_376, 12_345),
    "item": (742_938_285, 67_890),
    "topic": (1_226_874_159, 13_579),
}
TABLES = ("user", "item", "topic")
# Candidate rows (requests x C) per chunk of the dense head, by head dtype (see Scorer.forward).
# float32: about 2 MB of (rows, W=64) activations, which stay in a core's L2 cache. bfloat16:
# 4x that, measured on the 2-core machine (`bench/train.py --regime grpo --head-dtype bfloat16`,
# 2 threads, alternated): 11.8-12.5k requests/s against 10.8-11.4k at 8192 (4 of 4 pairs);
# the same with 1 thread. In a full-size grpo day the training phase moved less, 52.4 s to
# 51.6-51.8 s (one run before, two after: within day-to-day noise). Float32 showed no
# consistent gain at 32768.
HEAD_CHUNK_ROWS = {"float32": 8192, "bfloat16": 32768}
# Candidate rows per call of the model when scoring without grad (TrainableScorer.score).
SCORE_CHUNK_ROWS = 51_200
# The torchrec collection holding each table (Scorer): the item table alone in one, so that
# one feature reads it (fbgemm's fused row-wise Adagrad backward on the CPU is multi-threaded
# only for such a table) and its bags (one per candidate) do not set the bag count of the others.
TABLE_COLLECTION = {"user": "request_ebc", "item": "item_ebc", "topic": "request_ebc"}
COLLECTIONS = tuple(dict.fromkeys(TABLE_COLLECTION.values()))  # ("request_ebc", "item_ebc")
# Largest one-hot matrix (ids x distinct ids) sum_by_id builds on CUDA: 16M entries, 192 MB at
# the peak (one_hot's int64 matrix and its float32 copy).
ONE_HOT_MAX_ENTRIES = 2**24
# Topic tables with more rows than this get a warning: every call looks up each row once
# (request_features), which costs more than one lookup per candidate once the rows outnumber a
# call's candidates (51,200 in a 512-request GRPO update or scoring piece).
TOPIC_ROWS_WARN = 65_536
# Value written into the gradient rows of empty bags (HeadInputs.backward); None = leave them
# unwritten. Tests set NaN to check that no kernel reads them.
EMPTY_BAG_GRAD: float | None = None


class ModelConfig(StrictModel):
    """The scorer's architecture and optimisers."""

    embedding_dim: int = Field(default=32, ge=4, le=1024)
    """Embedding dimension D of every table; a multiple of 4 (fbgemm's TBE kernels need it)."""
    user_rows: int | None = Field(default=None, gt=0)
    """Rows of the user table. None (or >= the number of users) = one row per user; fewer rows
    hash user ids into the table (universal hash, see the module docstring): the sparse-capacity
    knob."""
    item_rows: int | None = Field(default=None, gt=0)
    """Rows of the item table (shared by candidates and the history bag); None = one per item."""
    topic_rows: int | None = Field(default=None, gt=0)
    """Rows of the topic table; None = one per topic. Every scoring call looks up each row
    once (cheap for the tens of topics of usual worlds), so a world with very many topics
    should bound it (a warning above ``TOPIC_ROWS_WARN`` rows)."""
    history_bag: bool = True
    """Use the user's click history (mean of its item rows) as a user-side feature."""
    head_width: int = Field(default=64, ge=1, le=8192)
    """Width W of the dense head's hidden layers: the dense-capacity knob (with depth)."""
    head_depth: int = Field(default=2, ge=1, le=16)
    """Number of hidden layers of the dense head (>= 1)."""
    head_dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the dense head's matrix products. 'bfloat16' runs them under
    ``torch.autocast`` (mixed precision): parameters, optimizer state, embedding tables and
    the returned logits stay float32, only the products and the activations between them are
    rounded to bfloat16 (8-bit mantissa). Measured faster on a CPU with AVX512-BF16 (the
    README's benchmark section); on hardware without bfloat16 units it may be slower (not
    measured here). Not bit-comparable with a float32 run of the same seed."""
    embedding_init_std: float = Field(default=0.05, gt=0.0, le=1.0)
    """Embedding rows start as N(0, std^2)."""
    sparse_optimizer: SparseOptimizer = "rowwise_adagrad"
    """Fused TBE optimizer of the tables: 'rowwise_adagrad' (one accumulator per row),
    'adagrad' (one per entry) or 'sgd'; the only ones fbgemm's CPU kernel supports."""
    sparse_lr: float = Field(default=0.05, gt=0.0, le=10.0)
    """Learning rate of the fused sparse optimizer."""
    sparse_eps: float = Field(default=1e-8, gt=0.0, le=1.0)
    """Adagrad epsilon (ignored by 'sgd')."""
    dense_lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    """Adam learning rate of the dense head."""
    dense_weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """Adam (L2, coupled) weight decay of the dense head. There is no sparse weight decay:
    fbgemm 1.8's CPU TBE kernels ignore it (measured), so CPU and CUDA runs would differ."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' = CUDA when available, else CPU."""
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    """How the tables are split across processes (``--nproc`` / torchrun) and the memory each
    process may give them (:mod:`recsys_onpolicy.sharding`)."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.embedding_dim % 4:
            raise ValueError(
                f"embedding_dim = {self.embedding_dim}: must be a multiple of 4 (fbgemm TBE); "
                f"use e.g. {4 * max(1, round(self.embedding_dim / 4))}"
            )
        return self


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a torch.device; 'cuda' without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def hash_ids(ids: torch.Tensor, rows: int, table: str) -> torch.Tensor:
    """Map ids (any shape, >= 0, < 2**31 - 1) into [0, rows) with the table's universal hash."""
    a, b = HASH_CONSTANTS[table]
    return ((ids % HASH_PRIME) * a + b) % HASH_PRIME % rows


def table_rows(cfg: ModelConfig, n_users: int, n_items: int, n_topics: int) -> dict[str, int]:
    """Rows of each table: the configured size, capped at one row per id."""
    wanted = {"user": cfg.user_rows, "item": cfg.item_rows, "topic": cfg.topic_rows}
    n_ids = {"user": n_users, "item": n_items, "topic": n_topics}
    for name, n in n_ids.items():
        if not 0 < n < HASH_PRIME:
            raise ValueError(f"number of {name} ids = {n}: must be in [1, {HASH_PRIME})")
    return {t: n_ids[t] if wanted[t] is None else min(wanted[t], n_ids[t]) for t in TABLES}


class Scorer(nn.Module):
    """Click logits for C candidates per request (see the module docstring for the head).

    Built with uninitialised weights; use :func:`build_scorer` for an initialised one.

    Args:
        cfg: architecture.
        n_users, n_items, n_topics: id counts of the world (ids are 0 .. n-1).
        device: where the dense head lives; the tables stay on 'meta' until materialised
            (by ``to_empty`` here, or by DistributedModelParallel in :class:`TrainableScorer`).
    """

    def __init__(
        self, cfg: ModelConfig, n_users: int, n_items: int, n_topics: int, device: torch.device
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_ids = {"user": n_users, "item": n_items, "topic": n_topics}
        self.rows = table_rows(cfg, n_users, n_items, n_topics)
        if self.rows["topic"] > TOPIC_ROWS_WARN:
            warnings.warn(
                f"the topic table has {self.rows['topic']:,} rows: every scoring call looks up "
                "each of them once (cheap for the tens of topics of usual worlds); set "
                f"model.topic_rows (e.g. {TOPIC_ROWS_WARN:,}) to hash topics into fewer rows",
                stacklevel=2)
        d, w = cfg.embedding_dim, cfg.head_width
        # One feature per table, named after it (item_features, request_features). MEAN
        # pooling: the history bag is a mean; single-id bags are the row itself.
        for name in COLLECTIONS:
            setattr(self, name, EmbeddingBagCollection(
                tables=[EmbeddingBagConfig(name=t, embedding_dim=d, num_embeddings=self.rows[t],
                                           feature_names=[t], pooling=PoolingType.MEAN)
                        for t in TABLES if TABLE_COLLECTION[t] == name],
                device=torch.device("meta"),
            ))
        n_user_vecs = 2 if cfg.history_bag else 1
        n_cand = 2 + 2 * n_user_vecs  # [i, t] and the products of each user vector with i and t
        with torch.device("meta"):
            self.user_in = nn.Linear(n_user_vecs * d, w)  # A and b: once per request
            self.cand_in = nn.Linear(n_cand * d, w, bias=False)  # Bc: once per candidate
            layers: list[nn.Module] = [nn.ReLU()]
            for _ in range(cfg.head_depth - 1):
                layers += [nn.Linear(w, w), nn.ReLU()]
            layers.append(nn.Linear(w, 1))
            self.mlp = nn.Sequential(*layers)
        for m in (self.user_in, self.cand_in, self.mlp):
            m.to_empty(device=device)

    def forward(
        self,
        users: torch.Tensor,
        history: torch.Tensor,
        candidates: torch.Tensor,
        candidate_topics: torch.Tensor,
    ) -> torch.Tensor:
        """users (B,), history (B,H) item ids with -1 padding (ignored without the history bag),
        candidates (B,C) item ids, candidate_topics (B,C) -> click logits (B,C)."""
        check_inputs(users, history, candidates, candidate_topics, self.n_ids, self.cfg.history_bag)
        b, c = candidates.shape
        d = self.cfg.embedding_dim
        items = self.item_ebc(item_features(history, candidates, self.rows, self.n_ids,
                                            self.cfg.history_bag)).values()  # (N_i, D)
        side = self.request_ebc(request_features(users, self.rows, self.n_ids))  # (N_r, 2D)
        # Columns by name: their order depends on the sharding plan.
        cols = feature_columns(side.keys(), side.length_per_key())
        layout = PooledLayout(b=b, c=c, d=d, topic_rows=self.rows["topic"], user=cols["user"],
                              topic=cols["topic"], history=self.cfg.history_bag)
        # Requests in chunks of about HEAD_CHUNK_ROWS candidates: each chunk's (b, C, W)
        # activations stay in the CPU cache (measured ~4x faster than a whole serving batch).
        per_chunk = max(1, HEAD_CHUNK_ROWS[self.cfg.head_dtype] // c)
        # The regrouped first layer (c >= D) multiplies [i, t] as they are: hand them over in
        # the head's dtype (one copy instead of a copy and autocast's cast). The product path
        # (c < D) multiplies them by user vectors first: float32, as autocast would leave them.
        dtype = torch.bfloat16 if self.cfg.head_dtype == "bfloat16" and c >= d else items.dtype
        cand_topic = table_ids(candidate_topics, "topic", self.rows, self.n_ids).view(b, c)
        user, *cand = HeadInputs.apply(items, side.values(), layout, cand_topic, dtype, per_chunk)
        # One autocast region for all chunks: the weights are cast to bfloat16 once per call.
        with torch.autocast(user.device.type, dtype=torch.bfloat16,
                            enabled=self.cfg.head_dtype == "bfloat16"):
            parts = [self.head(u, it) for u, it in zip(user.split(per_chunk), cand)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)  # (B, C)
        return out.to(user.dtype)  # (B, C) in the embeddings' dtype whatever the head computed in

    def head(self, user: torch.Tensor, item_topic: torch.Tensor) -> torch.Tensor:
        """Click logits (b, C) of one chunk of requests from their user-side features user
        (b, n_user*D) = [u, h] and candidate features item_topic (b, C, 2D) = [i, t].

        The candidate part of the first layer, ``Bc [i, t, u*i, u*t, h*i, h*t]`` with
        Bc = [Bi | Bt | Bui | But | Bhi | Bht] (D columns each), is computed one of two ways:

        - C >= D (serving, GRPO: C = 100 candidates): regrouped per request as ``M [i, t]``
          with ``M = [Bi + Bui diag(u) + Bhi diag(h) | Bt + But diag(u) + Bht diag(h)]``, one
          (W, 2D) matrix per request, so a candidate costs one 2D x W product (one batched GEMM
          per chunk) and no (b, C, 6D) products are built.
        - C < D (supervised training on the K served items): building M costs more than the
          few candidates it serves, so the products ``[i, t] * [u, u]`` (and h) are built and
          multiplied by Bc^T in one GEMM.

        Both are the same function up to float rounding (measured crossover: C ~ D).
        """
        d = self.cfg.embedding_dim
        b, c, _ = item_topic.shape
        wt = self.cand_in.weight.t()  # (n_cand*D, W): rows i, t, u*i, u*t[, h*i, h*t]
        # [u, u] and [h, h]: each user vector against [i, t]
        pairs = [user[:, k * d:(k + 1) * d].repeat(1, 2) for k in range(user.shape[1] // d)]
        z0 = self.user_in(user)[:, None, :]  # (b, 1, W)
        if c >= d:
            # M^T of each request, (b, 2D, W): its row j is sum_k vecs[:, j, k] * wk[k, j] with
            # vecs = [1, [u, u], [h, h]] (b, 2D, K) and wk = the K blocks of Bc^T (K, 2D, W).
            # As one product batched over j (backward: two more), not K - 1 broadcast
            # multiply-adds (whose backward multiplies and sums whole (b, 2D, W) tensors):
            # measured 4.6 against 7.2 ms a 327-request bfloat16 chunk, forward + backward.
            vecs = torch.stack([torch.ones_like(pairs[0])] + pairs, dim=2)  # (b, 2D, K)
            wk = wt.view(len(pairs) + 1, 2 * d, wt.shape[1])  # (K, 2D, W)
            m = torch.bmm(vecs.transpose(0, 1), wk.transpose(0, 1))  # (2D, b, W)
            z = torch.baddbmm(z0, item_topic, m.transpose(0, 1).contiguous())  # (b, C, W)
        else:
            feats = torch.cat([item_topic] + [item_topic * vec[:, None, :] for vec in pairs],
                              dim=2)  # (b, C, n_cand*D)
            z = (feats.flatten(0, 1) @ wt).view(b, c, wt.shape[1]) + z0  # (b, C, W)
        # mlp = [ReLU, (Linear, ReLU) x (depth - 1), Linear]. The ReLUs work in place (no
        # layer's backward needs its pre-ReLU output), on whole tensors only: in place on a
        # view would make autograd copy the base in backward.
        z = z.relu_().flatten(0, 1)  # (b*C, W)
        for layer in list(self.mlp)[1:]:
            z = z.relu_() if isinstance(layer, nn.ReLU) else layer(z)
        return z.view(item_topic.shape[:2])  # (b, C)

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, D) of each table."""
        return {t: (self.rows[t], self.cfg.embedding_dim) for t in TABLES}

    def dense_named_parameters(self) -> dict[str, nn.Parameter]:
        """The head's parameters by name (everything outside the embedding tables)."""
        return {n: p for n, p in self.named_parameters() if n.split(".")[0] not in COLLECTIONS}

    def collections(self) -> dict[str, EmbeddingBagCollection]:
        """The torchrec collections by attribute name (``request_ebc``, ``item_ebc``)."""
        return {name: getattr(self, name) for name in COLLECTIONS}

    def table_weights(self) -> dict[str, torch.Tensor]:
        """Each table's (rows, D) weight by table name (of an unsharded scorer)."""
        return {t: getattr(self, TABLE_COLLECTION[t]).embedding_bags[t].weight for t in TABLES}


def feature_columns(keys: list[str], lengths: list[int]) -> dict[str, slice]:
    """Columns of each feature in a pooled KeyedTensor's values (keys and widths in order)."""
    out, start = {}, 0
    for key, width in zip(keys, lengths):
        out[key] = slice(start, start + width)
        start += width
    return out


@dataclass(frozen=True)
class PooledLayout:
    """Where the head's inputs sit in the two pooled outputs of one call of B requests of C
    candidates: the item collection's (N_i, D) (:func:`item_features`: candidates in rows
    0 .. B*C-1, request by request, then the history bags) and the request collection's
    (N_r, 2D) (:func:`request_features`: user rows 0 .. B-1, topic rows 0 .. T-1), whose two
    feature columns are found by name (their order depends on the sharding plan)."""

    b: int
    c: int
    d: int  # embedding dim
    topic_rows: int  # topic bags: table rows 0 .. topic_rows - 1
    user: slice  # the user column of the request collection's output
    topic: slice  # its topic column
    history: bool  # history bags in item rows B*C .. B*C+B-1, the padding bag in the last row


class HeadInputs(torch.autograd.Function):
    """The two pooled outputs -> the head's inputs, with a backward that writes one gradient
    buffer per output.

    ``apply(items (N_i, D), side (N_r, 2D), layout, topics (B, C), dtype, per_chunk) ->
    (user, *cand)`` (``topics``: each candidate's topic-table row, hashed where the table is
    smaller): ``user`` (B, U) = [u, h] (or [u]) of each request (a copy); ``cand`` = the
    candidate features [i, t] (b_k, C, 2D) in ``dtype`` of consecutive chunks of ``per_chunk``
    requests: ``i`` the candidate's own item row, ``t`` the pooled row of its topic (every
    topic is looked up once per call, :func:`request_features`).

    Backward: the topic gradients are summed per topic (so the table update sees the same
    per-row sum as one lookup per candidate, up to float rounding); the gradient rows of the
    request collection's empty bags are left unwritten (the TBE backward never reads them:
    tested with NaN there, ``EMPTY_BAG_GRAD``) and the history's padding bag gets zeros.
    """

    @staticmethod
    def forward(ctx, items, side, lay, topics, dtype, per_chunk):
        b, c, d = lay.b, lay.c, lay.d
        parts = [side[:b, lay.user]] + ([items[b * c:b * c + b]] if lay.history else [])
        user = torch.cat(parts, dim=1)  # (B, U), a copy
        topic_rows = side[:lay.topic_rows, lay.topic].to(dtype)  # (T, D)
        cand_items = items[:b * c].view(b, c, d)  # (B, C, D)
        chunks = []
        for lo in range(0, max(b, 1), per_chunk):  # an empty batch: one empty chunk
            n = min(per_chunk, b - lo)
            out = items.new_empty((n, c, 2 * d), dtype=dtype)  # (n, C, 2D)
            out[:, :, :d].copy_(cand_items[lo:lo + n])
            out[:, :, d:].copy_(topic_rows.index_select(0, topics[lo:lo + n].reshape(-1))
                                .view(n, c, d))
            chunks.append(out)
        ctx.save_for_backward(topics)
        ctx.lay, ctx.shapes = lay, (items.shape, side.shape)
        ctx.chunk_rows = [x.shape[0] for x in chunks]
        ctx.set_materialize_grads(False)
        return (user, *chunks)

    @staticmethod
    def backward(ctx, g_user, *g_cand):
        (topics,) = ctx.saved_tensors
        lay = ctx.lay
        b, c, d = lay.b, lay.c, lay.d
        ref = g_user if g_user is not None else next(g for g in g_cand if g is not None)
        g_items = ref.new_empty(ctx.shapes[0], dtype=torch.float32)  # (N_i, D): every row set
        g_side = ref.new_empty(ctx.shapes[1], dtype=torch.float32)  # (N_r, 2D)
        if EMPTY_BAG_GRAD is not None:
            g_side.fill_(EMPTY_BAG_GRAD)
        if g_user is None:
            g_side[:b, lay.user] = 0.0
            g_items[b * c:] = 0.0
        else:
            g_side[:b, lay.user] = g_user[:, :d]
            if lay.history:
                g_items[b * c:b * c + b] = g_user[:, d:2 * d]
                g_items[b * c + b:] = 0.0  # the history's padding bag
        g_cand_items = g_items[:b * c].view(b, c, d)  # (B, C, D)
        per_topic = g_side.new_zeros((lay.topic_rows, d))  # (T, D)
        lo = 0
        for part, n in zip(g_cand, ctx.chunk_rows):
            if part is None:
                g_cand_items[lo:lo + n] = 0.0
            else:
                g_cand_items[lo:lo + n] = part[:, :, :d]
                per_topic += sum_by_id(topics[lo:lo + n].reshape(-1),
                                       part[:, :, d:].reshape(-1, d), lay.topic_rows)
            lo += n
        g_side[:lay.topic_rows, lay.topic] = per_topic
        return g_items, g_side, None, None, None, None


def sum_by_id(ids: torch.Tensor, rows: torch.Tensor, n_ids: int,
              one_hot: bool | None = None) -> torch.Tensor:
    """Float32 sums (n_ids, D) of ``rows`` (n, D) grouped by ``ids`` (n,) in [0, n_ids).

    In a fixed order, so a run repeats bit for bit: ``index_add_`` on the CPU (sequential
    per id); on CUDA, where ``index_add_`` adds with atomics (run-to-run differences), a
    one-hot matrix product while the one-hot matrix stays under ``ONE_HOT_MAX_ENTRIES``.
    ``one_hot`` forces either way (None: by device)."""
    if one_hot is None:
        one_hot = rows.device.type == "cuda" and ids.numel() * n_ids <= ONE_HOT_MAX_ENTRIES
    if one_hot:
        return torch.nn.functional.one_hot(ids, n_ids).to(torch.float32).t() @ rows.float()
    out = rows.new_zeros((n_ids, rows.shape[1]), dtype=torch.float32)
    # contiguous: index_add_ on strided rows (a column slice) was about 10x slower, measured
    return out.index_add_(0, ids, rows.float().contiguous())


def check_inputs(
    users: torch.Tensor,
    history: torch.Tensor,
    candidates: torch.Tensor,
    candidate_topics: torch.Tensor,
    n_ids: dict[str, int],
    history_bag: bool,
) -> None:
    """Raise ValueError naming the argument when a shape, dtype or id is wrong."""
    if candidates.dim() != 2 or candidates.shape[1] < 1:
        raise ValueError(f"candidates must be (B, C) with C >= 1, got {tuple(candidates.shape)}")
    b = candidates.shape[0]
    if users.shape != (b,):
        raise ValueError(f"users must be (B,) = ({b},), got {tuple(users.shape)}")
    if candidate_topics.shape != candidates.shape:
        raise ValueError(
            f"candidate_topics must match candidates {tuple(candidates.shape)}, "
            f"got {tuple(candidate_topics.shape)}"
        )
    named = [("users", users, "user", 0), ("candidates", candidates, "item", 0),
             ("candidate_topics", candidate_topics, "topic", 0)]
    if history_bag:
        if history.dim() != 2 or history.shape[0] != b:
            raise ValueError(f"history must be (B, H) = ({b}, H), got {tuple(history.shape)}")
        named.append(("history", history, "item", -1))
    for arg, ids, _, _ in named:
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{arg} must hold integer ids, got dtype {ids.dtype}")
    # Range checks on the device (simulators.expect: no host round trip on CUDA).
    for arg, ids, table, lowest in named:
        if not ids.numel():
            continue
        lo, hi = torch.aminmax(ids)
        wanted = f"{arg} ids must be in [0, {n_ids[table]})" + (
            " or -1 (padding)" if lowest < 0 else "")
        expect((lo >= lowest) & (hi < n_ids[table]), ValueError, wanted,
               lambda wanted=wanted, lo=lo, hi=hi: f"{wanted}, got values in [{int(lo)}, {int(hi)}]")


def item_features(
    history: torch.Tensor,
    candidates: torch.Tensor,
    rows: dict[str, int],
    n_ids: dict[str, int],
    history_bag: bool,
) -> KeyedJaggedTensor:
    """The item collection's KJT (one feature, ``item``) of a batch of B requests of C
    candidates: bag b*C + j holds request b's candidate j (so the pooled rows 0 .. B*C-1 are
    the (B, C, D) candidate embeddings, no gather needed); with the history bag, bag B*C + b is
    request b's history and the last bag all of the history's padding (:func:`history_bags`),
    N_i = B*C + B + 1 bags; without it N_i = B*C (one empty bag for an empty batch). Ids are
    hashed where the table has fewer rows than ids (:func:`table_ids`).

    Why this layout: fbgemm's CPU kernels cost per bag, empty or not, and their fused
    row-wise Adagrad backward runs multi-threaded only for a table that one feature reads
    (with several features reading the item table it ran a scalar loop on one thread)."""
    b, c = candidates.shape
    dev = candidates.device
    values = [table_ids(candidates, "item", rows, n_ids)]  # (B*C,)
    lengths = [torch.ones(b * c, dtype=torch.long, device=dev)]
    if history_bag:
        ids, hist_len = history_bags(history)  # (B*H,), (B + 1,)
        values.append(table_ids(ids, "item", rows, n_ids))
        lengths.append(hist_len)
    elif b * c == 0:  # torchrec needs a bag: one empty one for an empty batch
        lengths.append(torch.zeros(1, dtype=torch.long, device=dev))
    ids = torch.cat(values) if len(values) > 1 else values[0]
    length = torch.cat(lengths) if len(lengths) > 1 else lengths[0]
    # The id count is known from shapes: torchrec need not read it from the device.
    return KeyedJaggedTensor(keys=["item"], values=ids, lengths=length,
                             stride=length.shape[0], length_per_key=[ids.shape[0]])


def request_features(users: torch.Tensor, rows: dict[str, int],
                     n_ids: dict[str, int]) -> KeyedJaggedTensor:
    """The request collection's KJT of B requests: N_r = max(B, T) bags per feature, ``user``
    in bags 0 .. B-1 (request b's user row) and ``topic`` looking up every row of the topic
    table once, in bags 0 .. T-1 (T = its rows; usual worlds have tens of topics: once per call
    instead of once per candidate, the head gathers them by each candidate's row,
    :class:`HeadInputs`; with very many topics set ``ModelConfig.topic_rows``, see
    ``TOPIC_ROWS_WARN``). Rows absent from the batch get a zero gradient, a no-op for the
    fused optimizers. Every other bag is empty."""
    b = users.shape[0]
    dev = users.device
    n_topic_rows = rows["topic"]
    n = max(b, n_topic_rows)
    user_len = torch.zeros(n, dtype=torch.long, device=dev)  # (N_r,)
    user_len[:b] = 1
    topic_len = torch.zeros(n, dtype=torch.long, device=dev)
    topic_len[:n_topic_rows] = 1
    values = torch.cat([table_ids(users, "user", rows, n_ids),
                        torch.arange(n_topic_rows, device=dev)])  # every row of the topic table
    return KeyedJaggedTensor(keys=["user", "topic"], values=values,
                             lengths=torch.cat([user_len, topic_len]), stride=n,
                             length_per_key=[b, n_topic_rows])


def table_key(table: str) -> str:
    """The state-dict key of a table's weight (``item_ebc.embedding_bags.item.weight``)."""
    return f"{TABLE_COLLECTION[table]}.embedding_bags.{table}.weight"


def upgrade_state(state: dict) -> dict:
    """A :meth:`TrainableScorer.state_dict` saved before the tables were split into two
    collections (all three in ``ebc``, keys ``ebc.embedding_bags.<table>.weight``) with the
    current keys (:func:`table_key`); the tensors are the same. Any other state is returned
    as it is."""
    old = {f"ebc.embedding_bags.{t}.weight": table_key(t) for t in TABLES}
    if not any(k in old for k in state.get("model", {})):
        return state
    rename = lambda d: {old.get(k, k): v for k, v in d.items()}
    return {**state, "model": rename(state["model"]),
            "sparse_optimizer": rename(state.get("sparse_optimizer", {}))}


def table_ids(ids: torch.Tensor, table: str, rows: dict[str, int],
              n_ids: dict[str, int]) -> torch.Tensor:
    """Flat int64 table rows (n,) of ids (any shape): the ids themselves, hashed where the
    table has fewer rows than ids."""
    ids = ids.reshape(-1).long()
    return ids if rows[table] >= n_ids[table] else hash_ids(ids, rows[table], table)


def history_bags(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The history bags' ids (B*H,) and lengths (B + 1,) for histories (B, H), -1 padded.

    Bag b holds request b's valid ids, in order. All the padding follows as id 0 in one last
    bag, so that there are B*H ids whatever the data: no host round trip on CUDA (dropping the
    padding with a boolean mask needs one). That bag's output is never read and its gradient
    row is zero (:class:`HeadInputs`), so no optimizer changes the row it looks up (a zero
    gradient is a no-op for SGD and Adagrad).
    """
    b, h = history.shape
    valid = history >= 0  # (B, H)
    n_valid = valid.sum(dim=1)  # (B,)
    lengths = torch.cat([n_valid, (b * h - n_valid.sum()).reshape(1)])  # (B + 1,)
    # Valid ids first, in request order (a stable sort on "is padding"), then the padding.
    order = torch.sort((~valid).reshape(-1).to(torch.uint8), stable=True).indices  # (B*H,)
    return history.reshape(-1)[order].clamp_min_(0), lengths


@torch.no_grad()
def init_weights(
    tables: dict[str, torch.Tensor],
    dense: dict[str, torch.Tensor],
    gen: torch.Generator,
    std: float,
    table_shapes: dict[str, tuple[int, int]],
) -> None:
    """Fill weights in place from ``gen`` (a CPU generator), in a fixed order.

    Tables (``user``, ``item``, ``topic``) ~ N(0, std^2); every dense weight and bias ~
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's nn.Linear range), by parameter name. A table
    absent from ``tables`` (held by another rank) is still drawn, to keep the stream aligned.
    A table's value may also be a list of ``(live shard, its slices in the table)`` (the shards
    this rank holds under column- or row-wise sharding).
    """
    d = next(iter(dense.values())).device
    for t in TABLES:
        w = torch.randn(table_shapes[t], generator=gen) * std  # (rows, D)
        held = tables.get(t, [])
        for live, where in [(held, ...)] if isinstance(held, torch.Tensor) else held:
            live.copy_(w[where].to(live.device))
    for name in sorted(dense):
        weight = dense[name.rsplit(".", 1)[0] + ".weight"]  # (out, in)
        bound = 1.0 / math.sqrt(weight.shape[1])
        vals = (torch.rand(dense[name].shape, generator=gen) * 2 - 1) * bound
        dense[name].copy_(vals.to(d))


def build_scorer(
    cfg: ModelConfig,
    n_users: int,
    n_items: int,
    n_topics: int,
    gen: torch.Generator,
    device: torch.device | None = None,
) -> Scorer:
    """A plain (unsharded) initialised :class:`Scorer`; for inference, tests and references.

    Training it directly works but builds dense gradients of whole tables: train through
    :class:`TrainableScorer` instead."""
    device = resolve_device(cfg.device) if device is None else device
    scorer = _plain_scorer(cfg, n_users, n_items, n_topics, device)
    init_weights(scorer.table_weights(), scorer.dense_named_parameters(), gen, cfg.embedding_init_std,
                 scorer.table_shapes())
    return scorer


def check_plan(cfg: ModelConfig, n_users: int, n_items: int, n_topics: int,
               world_size: int, local_world_size: int | None = None) -> None:
    """Plan the tables for ``world_size`` processes (``local_world_size`` per machine; default:
    torchrun's ``LOCAL_WORLD_SIZE``, else all on one) without a process group or any memory (a
    dry run of what :class:`TrainableScorer` plans): raises :class:`ShardingPlanError` where
    building the model would, so that a config is refused before a run starts."""
    scorer = Scorer(cfg, n_users, n_items, n_topics, torch.device("meta"))
    sharder = EmbeddingBagCollectionSharder(
        fused_params=fused_params(cfg.sparse_optimizer, cfg.sparse_lr, cfg.sparse_eps))
    plan_tables(scorer.collections(), sharder, cfg.sharding, cfg.sparse_optimizer,
                resolve_device(cfg.device), world_size=world_size,
                local_world_size=local_world_size)


def _plain_scorer(cfg: ModelConfig, n_users: int, n_items: int, n_topics: int,
                  device: torch.device) -> Scorer:
    scorer = Scorer(cfg, n_users, n_items, n_topics, device)
    for ebc in scorer.collections().values():
        ebc.to_empty(device=device)
    return scorer


def _local(t: torch.Tensor) -> torch.Tensor | None:
    """This rank's whole-table tensor of a (possibly sharded) state entry; None if not held."""
    if not isinstance(t, ShardedTensor):
        return t
    with warnings.catch_warnings():  # torchrec's "ShardedTensor is deprecated" FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        shards, size = t.local_shards(), tuple(t.size())
    if not shards:
        return None
    if len(shards) != 1 or tuple(shards[0].tensor.shape) != size:
        raise NotImplementedError("only whole tables per rank (table-wise sharding) are supported")
    return shards[0].tensor


def _quiet(fn, *args):
    """Call ``fn`` hiding torchrec's 'ShardedTensor is deprecated' FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


class TrainableScorer:
    """A :class:`Scorer` under DistributedModelParallel: fused sparse optimizer + dense Adam.

    Args:
        cfg: the model config (its ``device`` picks CPU or CUDA).
        n_users, n_items, n_topics: id counts of the world.
        gen: CPU generator for the initial weights (see :func:`init_weights`).

    Usage::

        model = TrainableScorer(cfg, n_users, n_items, n_topics, gen)
        logits = model.score(users, history, items, topics)   # (B, K)
        model.step(pointwise_bce(logits.flatten(), clicks.flatten()))

    The table rows a batch touches are updated *during* ``loss.backward()`` (inside ``step``);
    dense parameters by Adam right after. Tables never get a ``.grad``.

    Several processes (a process group of world size > 1, e.g. under ``torchrun``): the tables
    are placed by torchrec's planner (:func:`recsys_onpolicy.sharding.plan_tables`,
    ``cfg.sharding``), the dense head is replicated (DDP). Every rank must then make the same
    calls with the same inputs (they are collectives): :meth:`score` splits the batch's rows
    among the ranks and gives every rank all rows back (:func:`recsys_onpolicy.distributed.
    gather_rows`), so a training step equals the one-process step up to float rounding.
    :meth:`state_dict`, :meth:`sparse_tables` and :meth:`sparse_optimizer_state` return whole
    tables (gathered copies), so checkpoints have the one-process layout.
    """

    def __init__(
        self, cfg: ModelConfig, n_users: int, n_items: int, n_topics: int, gen: torch.Generator
    ) -> None:
        self.cfg = cfg
        self.device = local_device(resolve_device(cfg.device))
        self.n_ids = {"user": n_users, "item": n_items, "topic": n_topics}
        self.pg = ensure_process_group(self.device)
        self.world_size = torch.distributed.get_world_size(self.pg)
        self.rank = torch.distributed.get_rank(self.pg)
        self.scorer = Scorer(cfg, n_users, n_items, n_topics, self.device)
        sharder = EmbeddingBagCollectionSharder(
            fused_params=fused_params(cfg.sparse_optimizer, cfg.sparse_lr, cfg.sparse_eps))
        # fbgemm fills new tables from the global RNG; fork it so that building a model leaves
        # global random state untouched (our own init below uses ``gen``).
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self.plan = plan_tables(self.scorer.collections(), sharder, cfg.sharding,
                                    cfg.sparse_optimizer, self.device, self.pg)
            self.dmp = shard_tables(self.scorer, self.plan, sharder, self.device, self.pg)
        dense = self.dense_parameters()
        tables = self.sparse_tables() if self.world_size == 1 else self.table_shards()
        init_weights(tables, dense, gen, cfg.embedding_init_std, self.scorer.table_shapes())
        # fused: one kernel for all parameters (0.08 against 0.24 ms a step for the head's
        # seven tensors on the CPU, measured); the same update up to float rounding.
        self.dense_optimizer = torch.optim.Adam(
            [dense[n] for n in sorted(dense)], lr=cfg.dense_lr,
            weight_decay=cfg.dense_weight_decay, fused=True,
        )

    # ---- scoring and training -------------------------------------------------------------
    def score(
        self,
        users: torch.Tensor,
        history: torch.Tensor,
        candidates: torch.Tensor,
        candidate_topics: torch.Tensor,
        *,
        local: bool = False,
    ) -> torch.Tensor:
        """Click logits (B, C) for candidates (B, C) of requests by users (B,) with history
        (B, H) (-1 = padding). Inputs may live on any device; the output is on ``self.device``.
        Call under ``torch.no_grad()`` when serving.

        With several ranks this is a collective, in one of two ways:

        - ``local=False`` (training, probes): every rank passes the same batch; each scores its
          block of rows and all get all rows back (:func:`recsys_onpolicy.distributed.
          gather_rows`), so a training step is the one-process step up to float rounding.
        - ``local=True`` (serving a rank's own users, :mod:`simulators.shard`): every rank
          passes its own batch (any size, maybe empty) and gets its own rows' scores; the
          ranks pad to the largest batch so that they make the same calls.

        Without grad (serving, probes) a big batch is scored in pieces of about
        SCORE_CHUNK_ROWS candidates: the pooled embeddings of a whole serving batch are
        hundreds of MB of fresh memory per call (measured faster in pieces). With grad it is
        one call, so that one backward makes one fused sparse update."""
        n, c = candidates.shape
        total = n
        if self.world_size > 1 and local:
            total = largest(n, self.pg)  # the biggest batch any rank passed
            if total > n:  # pad with copies of a dummy request (scores cut off below)
                users, history, candidates, candidate_topics = (
                    _pad_rows(t, total, fill) for t, fill in
                    ((users, 0), (history, -1), (candidates, 0), (candidate_topics, 0)))
        piece = self._score if not local else self._score_local
        per = max(1, SCORE_CHUNK_ROWS // max(1, c))
        if total > per and not torch.is_grad_enabled():
            out = torch.cat([piece(users[i:i + per], history[i:i + per], candidates[i:i + per],
                                   candidate_topics[i:i + per])
                             for i in range(0, total, per)])  # (total, C)
        elif total == 0:
            out = torch.zeros((0, c), device=self.device)
        else:
            out = piece(users, history, candidates, candidate_topics)
        return out[:n]

    def _score_local(self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor,
                     candidate_topics: torch.Tensor) -> torch.Tensor:
        """Scores of this rank's own rows (the tables' collectives, no row gather)."""
        dev = self.device
        return self.dmp(users.to(dev), history.to(dev), candidates.to(dev),
                        candidate_topics.to(dev))

    def _score(self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor,
               candidate_topics: torch.Tensor) -> torch.Tensor:
        """:meth:`score` of one piece of a batch every rank passes."""
        dev = self.device
        if self.world_size == 1:
            return self.dmp(users.to(dev), history.to(dev), candidates.to(dev),
                            candidate_topics.to(dev))
        n = candidates.shape[0]
        if n == 0:
            return torch.zeros(candidates.shape, device=dev)
        rows = local_rows(n, self.world_size, self.rank, users.device)  # (ceil(n / world),)
        local = self.dmp(users[rows].to(dev), history[rows].to(dev), candidates[rows].to(dev),
                         candidate_topics[rows].to(dev))  # (per, C)
        return gather_rows(local, n, self.pg)  # (n, C)

    def score_requests(self, batch, *, local: bool = False) -> torch.Tensor:
        """:meth:`score` on anything with ``users, history, candidates, candidate_topics``
        attributes (``simulators.day.Requests``, ``DayLog``)."""
        return self.score(batch.users, batch.history, batch.candidates, batch.candidate_topics,
                          local=local)

    def step(self, loss: torch.Tensor) -> None:
        """Backward (fused sparse updates happen here) and one Adam step on the dense head."""
        self.dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dense_optimizer.step()

    def train(self) -> TrainableScorer:
        self.dmp.train()
        return self

    def eval(self) -> TrainableScorer:
        self.dmp.eval()
        return self

    # ---- parameters (for drift probes) ---------------------------------------------------
    def dense_parameters(self) -> dict[str, nn.Parameter]:
        """The dense head's live parameters by name (``user_in.weight``, ``mlp.1.bias``, ...)."""
        return self.scorer.dense_named_parameters()

    def sparse_tables(self) -> dict[str, torch.Tensor]:
        """Live (rows, D) weights of the tables this rank holds, by table name; in-place views
        into the fused kernel's storage: clone before keeping a snapshot. With several ranks:
        every whole table, gathered (copies; a collective)."""
        sd = _quiet(self.dmp.state_dict)
        if self.world_size > 1:
            return self._gather({t: sd[table_key(t)] for t in TABLES})
        out = {t: _local(sd[table_key(t)]) for t in TABLES}
        return {t: w for t, w in out.items() if w is not None}

    def table_shards(self) -> dict[str, list[tuple[torch.Tensor, tuple[slice, ...]]]]:
        """This rank's live table shards: ``{table: [(shard, its slices in the table)]}``."""
        sd = _quiet(self.dmp.state_dict)
        return {t: local_regions(sd[table_key(t)]) for t in TABLES}

    def _gather(self, local: dict) -> dict:
        """Whole tensors of (possibly sharded) entries on every rank (a collective)."""
        with warnings.catch_warnings():  # "ShardedTensor is deprecated"
            warnings.simplefilter("ignore", FutureWarning)
            return gather_state(local, self.device, self.pg)

    def sparse_optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Live fused-optimizer state by parameter name, e.g.
        ``{'item_ebc.embedding_bags.item.weight': {'item.momentum1': (rows,)}}`` for row-wise
        Adagrad (one accumulator per row); empty dicts for SGD. With several ranks: whole
        tensors, gathered (copies; column-wise shards of row-wise Adagrad keep one accumulator
        per row per shard, so ``momentum1`` then has rows x shards entries)."""
        state = _quiet(self.dmp.fused_optimizer.state_dict)["state"]
        if self.world_size > 1:
            flat = self._gather({(p, n): v for p, e in state.items() for n, v in e.items()})
            out = {table_key(t): {} for t in TABLES}
            for (param, name), v in flat.items():
                out[param][name] = v
            return out
        out = {}
        for param, entries in state.items():
            local = {n: _local(v) for n, v in entries.items()}
            out[param] = {n: v for n, v in local.items() if v is not None}
        return out

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Full training state as plain tensors / containers (``torch.load(weights_only=True)``
        can read it): ``model`` (tables and head), ``sparse_optimizer`` (fused state),
        ``dense_optimizer`` (Adam). Tensors are live references: save or clone them. With
        several ranks the tables are whole (gathered copies), as with one process."""
        if self.world_size > 1:
            return {"model": self._gather(_quiet(self.dmp.state_dict)),
                    "sparse_optimizer": self.sparse_optimizer_state(),
                    "dense_optimizer": self.dense_optimizer.state_dict()}
        model = {k: _local(v) for k, v in _quiet(self.dmp.state_dict).items()}
        return {
            "model": {k: v.detach() for k, v in model.items() if v is not None},
            "sparse_optimizer": self.sparse_optimizer_state(),
            "dense_optimizer": self.dense_optimizer.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (copies into the live tensors), also one
        saved before the tables were split into two collections (:func:`upgrade_state`). All
        or nothing: every key and shape is checked (ValueError naming the entry) before
        anything is copied."""
        missing = {"model", "sparse_optimizer", "dense_optimizer"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass TrainableScorer.state_dict()")
        state = upgrade_state(state)
        if self.world_size > 1:
            live_model = _quiet(self.dmp.state_dict)
            live_opt = _quiet(self.dmp.fused_optimizer.state_dict)["state"]
            everything = {table_key(t) for t in TABLES}
            pairs = self._checked_pairs(live_model, live_opt, state, everything)
        else:
            live_opt = self.sparse_optimizer_state()
            pairs = self._checked_pairs(self.state_dict()["model"], live_opt, state, set(live_opt))
        # torch keeps the given state tensors as live state: clone so later steps never write
        # into the caller's dict (e.g. a checkpoint kept in memory). It checks the groups before
        # changing anything, so it goes before the copies.
        dense = _clone_tree(state["dense_optimizer"])
        for group in dense["param_groups"]:  # a state saved unfused would bring fused=False
            group["fused"] = True  # (set before loading: torch then puts `step` on the device)
        self.dense_optimizer.load_state_dict(dense)
        for live, saved in pairs:
            _copy_regions(live, saved)

    def _checked_pairs(self, live_model: dict, live_opt: dict, state: dict,
                       known: set[str]) -> list[tuple[dict, dict]]:
        """(live, saved) entry dicts to copy, after every key and shape has been checked."""
        extra = set(state["sparse_optimizer"]) - known
        if extra:
            raise ValueError(f"sparse_optimizer has unknown parameters {sorted(extra)}")
        pairs = [(live_model, state["model"], "model")] + [
            (entries, state["sparse_optimizer"].get(param, {}), f"sparse_optimizer.{param}")
            for param, entries in live_opt.items()]
        for live, saved, where in pairs:
            _check_entries(live, saved, where)
        return [(live, saved) for live, saved, _ in pairs]

    def frozen_copy(self) -> Scorer:
        """A plain, no-grad :class:`Scorer` with the current weights (the reference policy
        pi_0 for KL terms); later training does not change it. With several ranks every rank
        gets the whole model (a collective)."""
        n = self.n_ids
        frozen = _plain_scorer(self.cfg, n["user"], n["item"], n["topic"], self.device)
        frozen.load_state_dict({k: v.clone() for k, v in self.state_dict()["model"].items()})
        return frozen.requires_grad_(False).eval()


def _pad_rows(t: torch.Tensor, rows: int, fill: int) -> torch.Tensor:
    """``t`` (n, ...) followed by rows of ``fill`` up to (rows, ...)."""
    pad = t.new_full((rows - t.shape[0], *t.shape[1:]), fill)
    return torch.cat([t, pad])


def _check_keys(live: dict, saved: dict, where: str) -> None:
    """Raise ValueError naming the missing / unexpected entries when the key sets differ."""
    if set(live) != set(saved):
        raise ValueError(
            f"{where}: saved keys differ from the model's: missing {sorted(set(live) - set(saved))},"
            f" unexpected {sorted(set(saved) - set(live))} (was the checkpoint made with "
            "another ModelConfig or world?)"
        )


def _check_entries(live: dict, saved: dict[str, torch.Tensor], where: str) -> None:
    """Raise ValueError naming the entry unless ``saved`` has ``live``'s keys and shapes (whole
    shapes: a sharded entry counts as the tensor it is a part of)."""
    _check_keys(live, saved, where)
    for k, v in live.items():
        size = tuple(_quiet(v.size))  # a ShardedTensor warns
        if tuple(saved[k].shape) != size:
            raise ValueError(
                f"{where}.{k}: saved shape {tuple(saved[k].shape)} != model shape "
                f"{size} (another ModelConfig or world size, or column-wise "
                "row-wise-Adagrad state saved under another sharding plan?)"
            )


def _copy_regions(live: dict, saved: dict[str, torch.Tensor]) -> None:
    """Copy whole saved tensors into the live (possibly sharded) entries this rank holds
    (checked by :func:`_check_entries` first)."""
    for k, v in live.items():
        for shard, region in local_regions(v):
            shard.copy_(saved[k][region].to(shard.device))


def _clone_tree(tree):
    """A copy of nested dicts/lists with every tensor cloned."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _clone_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone_tree(v) for v in tree)
    return tree

