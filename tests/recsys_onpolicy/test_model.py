"""Tests of recsys_onpolicy/model.py: config, hashing, the scorer's maths, the fused training path.

Tiny worlds only. TrainableScorer starts a single-process gloo group on a free port the first
time it is built in a test process (each pytest-xdist worker gets its own).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys_onpolicy import model as model_module
from recsys_onpolicy.model import (
    ModelConfig,
    Scorer,
    TrainableScorer,
    build_scorer,
    hash_ids,
    table_rows,
)
from recsys_onpolicy.objectives import pointwise_bce
from simulators.typed_config import ConfigError, validate

U, I, T = 40, 30, 5  # users, items, topics of the tiny world
CPU = ModelConfig(device="cpu", embedding_dim=8, head_width=16)


def batch(gen: torch.Generator, b: int = 6, c: int = 4, h: int = 5):
    users = torch.randint(0, U, (b,), generator=gen)
    history = torch.randint(-1, I, (b, h), generator=gen)  # (B, H), some -1 padding
    cands = torch.randint(0, I, (b, c), generator=gen)
    topics = torch.randint(0, T, (b, c), generator=gen)
    return users, history, cands, topics


def reference_logits(scorer: Scorer, users, history, cands, topics) -> torch.Tensor:
    """The head written out by hand from the module docstring, one request at a time."""
    weights = scorer.table_weights()
    rows = []
    lin = lambda m, x: x @ m.weight.T + (m.bias if m.bias is not None else 0)

    def row(table: str, ids) -> torch.Tensor:  # the table row(s) of ids, hashed if fewer rows
        ids = torch.as_tensor(ids, dtype=torch.long)
        if scorer.rows[table] < scorer.n_ids[table]:
            ids = hash_ids(ids, scorer.rows[table], table)
        return weights[table][ids]

    for r in range(cands.shape[0]):
        user_vecs = [row("user", users[r])]
        if scorer.cfg.history_bag:
            ids = [x for x in history[r].tolist() if x >= 0]
            user_vecs.append(row("item", ids).mean(0) if ids
                             else torch.zeros_like(user_vecs[0]))
        row_out = []
        for j in range(cands.shape[1]):
            i, t = row("item", cands[r, j]), row("topic", topics[r, j])
            feats = [i, t] + [x for v in user_vecs for x in (v * i, v * t)]
            z = lin(scorer.user_in, torch.cat(user_vecs)) + lin(scorer.cand_in, torch.cat(feats))
            for layer in scorer.mlp:
                z = torch.relu(z) if isinstance(layer, torch.nn.ReLU) else lin(layer, z)
            row_out.append(z.squeeze())
        rows.append(torch.stack(row_out))
    return torch.stack(rows)  # (B, C), differentiable w.r.t. every parameter


# ---- config -------------------------------------------------------------------------------
def test_config_defaults_are_valid_and_documented():
    cfg = ModelConfig()
    assert cfg.sparse_optimizer == "rowwise_adagrad" and cfg.device == "auto"
    assert all(f.description for f in ModelConfig.model_fields.values())


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"embedding_dim": 30}, "multiple of 4"),
        ({"head_depth": 0}, "head_depth"),
        ({"user_rows": 0}, "user_rows"),
        ({"sparse_optimizer": "adam"}, "sparse_optimizer"),
        ({"sparse_lr": -0.1}, "sparse_lr"),
        ({"device": "tpu"}, "device"),
        ({"head_dtype": "float16"}, "head_dtype"),
        ({"embedding_dims": 32}, "unknown key"),
    ],
)
def test_bad_config_names_the_field(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(ModelConfig, bad)


# ---- hashing ------------------------------------------------------------------------------
def test_hash_maps_into_table_and_spreads_strided_ids():
    ids = torch.arange(0, 10_000)
    h = hash_ids(ids, 10, "user")
    assert h.min() >= 0 and h.max() < 10
    counts = torch.bincount(h, minlength=10)
    assert counts.min() > 800 and counts.max() < 1200  # ~1000 per row
    strided = hash_ids(torch.arange(0, 1000, 10), 10, "item")  # all == 0 under ids % 10
    assert len(set(strided.tolist())) == 10
    assert not torch.equal(hash_ids(ids, 10, "user"), hash_ids(ids, 10, "item"))


def test_table_rows_caps_at_one_row_per_id():
    cfg = ModelConfig(user_rows=8, item_rows=1000)
    assert table_rows(cfg, U, I, T) == {"user": 8, "item": I, "topic": T}


def test_hashed_users_share_a_row():
    cfg = CPU.model_copy(update={"user_rows": 4})
    scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    assert scorer.table_weights()["user"].shape == (4, 8)
    rows = hash_ids(torch.arange(U), 4, "user")
    a, b = [u for u in range(U) if rows[u] == rows[0]][:2]
    c = next(u for u in range(U) if rows[u] != rows[0])
    _, history, cands, topics = batch(torch.Generator().manual_seed(1), b=1)
    score = lambda u: scorer(torch.tensor([u]), history, cands, topics)
    assert torch.equal(score(a), score(b))
    assert not torch.allclose(score(a), score(c))


# ---- the scorer ---------------------------------------------------------------------------
# c = 4 < D = 8 takes the head's product-feature path, c = 12 and 20 >= D the
# per-request-matrix path; chunk_rows = 20 / 40 split 7 requests into several head chunks
# (Scorer.forward).
HEAD_CASES = [(4, 8192), (12, 8192), (20, 8192), (4, 20), (12, 20), (20, 40)]


def chunk_table(rows: int) -> dict[str, int]:
    """HEAD_CHUNK_ROWS with ``rows`` for every head dtype."""
    return dict.fromkeys(model_module.HEAD_CHUNK_ROWS, rows)


@pytest.mark.parametrize("history_bag", [True, False])
@pytest.mark.parametrize("c, chunk_rows", HEAD_CASES)
def test_forward_matches_hand_written_head(c, chunk_rows, history_bag, monkeypatch):
    monkeypatch.setattr(model_module, "HEAD_CHUNK_ROWS", chunk_table(chunk_rows))
    cfg = CPU.model_copy(update={"history_bag": history_bag})
    scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1), b=7, c=c)
    x[1][0] = -1  # a request with an empty history
    with torch.no_grad():
        got, want = scorer(*x), reference_logits(scorer, *x)
    assert got.shape == (7, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c, chunk_rows", HEAD_CASES)
def test_gradients_match_hand_written_head(c, chunk_rows, monkeypatch):
    """Every parameter's gradient (tables included: a plain Scorer has dense table grads)
    equals autograd through the hand-written head, through the regrouped first layer, the
    chunks and HeadInputs' backward."""
    monkeypatch.setattr(model_module, "HEAD_CHUNK_ROWS", chunk_table(chunk_rows))
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1), b=7, c=c)
    weights = torch.randn(7, c, generator=torch.Generator().manual_seed(2))

    def grads(fn) -> dict[str, torch.Tensor]:
        scorer.zero_grad(set_to_none=True)
        (fn(*x) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in scorer.named_parameters() if p.grad is not None}

    got, want = grads(scorer), grads(lambda *a: reference_logits(scorer, *a))
    assert set(got) == set(want) == {n for n, _ in scorer.named_parameters()}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


BF16 = CPU.model_copy(update={"head_dtype": "bfloat16"})


@pytest.mark.parametrize("c, chunk_rows", HEAD_CASES)
def test_bfloat16_head_rounds_only_the_head(c, chunk_rows, monkeypatch):
    """head_dtype = bfloat16: the logits (float32) are the float32 head's up to bfloat16
    rounding, and really rounded (the knob is on); every gradient is close to the float32
    head's, tables included."""
    monkeypatch.setattr(model_module, "HEAD_CHUNK_ROWS", chunk_table(chunk_rows))
    x = batch(torch.Generator().manual_seed(1), b=7, c=c)
    weights = torch.randn(7, c, generator=torch.Generator().manual_seed(2))
    out, grads = {}, {}
    for name, cfg in (("fp32", CPU), ("bf16", BF16)):
        scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
        out[name] = scorer(*x)
        (out[name] * weights).sum().backward()
        grads[name] = {n: p.grad for n, p in scorer.named_parameters()}
    assert out["bf16"].dtype == torch.float32
    scale = out["fp32"].abs().max().item()
    err = (out["bf16"] - out["fp32"]).abs().max().item()
    # bfloat16 keeps 8 significant bits (~4e-3 per rounding); sums of rounded terms cancel: 1.9e-2
    assert 0 < err < 5e-2 * scale
    for n, g in grads["fp32"].items():
        torch.testing.assert_close(grads["bf16"][n], g, rtol=0.05,
                                   atol=0.03 * g.abs().max().item(), msg=n)


@pytest.mark.parametrize("dtype, calls", [("float32", 7), ("bfloat16", 3)])
def test_head_chunks_follow_the_head_dtype(dtype, calls, monkeypatch):
    """Each head dtype has its own chunk size: 7 requests of 12 candidates go through the
    head one request at a time with 20 rows a chunk, three at a time with 40."""
    monkeypatch.setattr(model_module, "HEAD_CHUNK_ROWS", {"float32": 20, "bfloat16": 40})
    scorer = build_scorer(CPU.model_copy(update={"head_dtype": dtype}), U, I, T,
                          torch.Generator().manual_seed(0))
    seen = []
    head = scorer.head
    monkeypatch.setattr(scorer, "head", lambda u, it: seen.append(u.shape[0]) or head(u, it))
    with torch.no_grad():
        scorer(*batch(torch.Generator().manual_seed(1), b=7, c=12))
    assert len(seen) == calls and sum(seen) == 7


def test_bfloat16_head_runs_under_the_trainer_and_trains():
    """Through TrainableScorer (DMP, fused tables) the head computes in bfloat16 too: the same
    initial weights score differently from float32, by rounding only; and the supervised
    test's task still trains."""
    cfg = {"sparse_lr": 0.1, "dense_lr": 1e-2}
    models = {name: TrainableScorer(c.model_copy(update=cfg), U, I, T,
                                    torch.Generator().manual_seed(0))
              for name, c in (("fp32", CPU), ("bf16", BF16))}
    gen = torch.Generator().manual_seed(1)
    users, history, cands, topics = batch(gen, b=64, c=8)
    with torch.no_grad():
        s32, s16 = (models[n].score(users, history, cands, topics) for n in ("fp32", "bf16"))
    assert s16.dtype == torch.float32
    assert 0 < (s16 - s32).abs().max().item() < 5e-2 * s32.abs().max().item()
    model = models["bf16"]
    clicks = (torch.rand(64, 8, generator=gen) < torch.sigmoid(
        3 * torch.randn(U, I, generator=gen))[users[:, None], cands]).float()
    losses = []
    for _ in range(30):
        loss = pointwise_bce(model.score(users, history, cands, topics).flatten(),
                             clicks.flatten())
        model.step(loss)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("c", [4, 20])
def test_hashed_tables_match_hand_written_head(c):
    """Items and topics hashed into fewer rows than ids (topics looked up once per call, then
    gathered by topic id): logits and gradients equal the hand-written head's on hashed rows."""
    cfg = CPU.model_copy(update={"item_rows": 7, "topic_rows": 3, "user_rows": 11})
    scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1), b=5, c=c)
    weights = torch.randn(5, c, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (scorer, lambda *a: reference_logits(scorer, *a)):
        scorer.zero_grad(set_to_none=True)
        out = fn(*x)
        (out * weights).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in scorer.named_parameters()}))
    (got, got_g), (want, want_g) = grads
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-4, atol=1e-5, msg=name)


def test_item_and_request_features_layout():
    """2 requests of 3 candidates: item bags 0-5 are the candidates request by request, bags
    6-7 the histories, bag 8 the history's padding; user bags 0-1 and the 5 topic rows 0-4."""
    users = torch.tensor([3, 9])
    history = torch.tensor([[4, -1, 6], [-1, -1, 8]])
    cands = torch.tensor([[1, 2, 3], [11, 12, 13]])
    rows = {"user": U, "item": I, "topic": T}
    items = model_module.item_features(history, cands, rows, rows, True)
    assert items.keys() == ["item"] and items.stride() == 9
    assert items.lengths().tolist() == [1] * 6 + [2, 1, 3]  # valid ids, then the padding
    assert items.values().tolist() == [1, 2, 3, 11, 12, 13, 4, 6, 8, 0, 0, 0]
    no_history = model_module.item_features(history, cands, rows, rows, False)
    assert no_history.stride() == 6 and no_history.values().tolist() == [1, 2, 3, 11, 12, 13]
    side = model_module.request_features(users, rows, rows)
    assert side.keys() == ["user", "topic"] and side.stride() == 5  # max(B, T) bags
    f = side.to_dict()
    assert f["user"].lengths().tolist() == [1, 1, 0, 0, 0]
    assert f["user"].values().tolist() == [3, 9]
    assert f["topic"].lengths().tolist() == [1] * 5
    assert f["topic"].values().tolist() == list(range(T))
    many = model_module.request_features(torch.arange(7), rows, rows)
    assert many.stride() == 7 and many.to_dict()["topic"].lengths().tolist() == [1] * 5 + [0] * 2


@pytest.mark.parametrize("history_bag", [True, False])
@pytest.mark.parametrize("swapped", [False, True])
def test_head_inputs_against_plain_indexing(swapped, history_bag, monkeypatch):
    """HeadInputs against plain indexing, forward and backward, with the request
    collection's columns in either order (as sharding plans may return them)."""
    monkeypatch.setattr(model_module, "EMPTY_BAG_GRAD", 0.0)  # unwritten rows read as 0
    b, c, d, n_topics = 3, 12, 4, 5
    cols = {"user": slice(0, d), "topic": slice(d, 2 * d)}
    if swapped:
        cols = {"user": slice(d, 2 * d), "topic": slice(0, d)}
    layout = model_module.PooledLayout(b=b, c=c, d=d, topic_rows=n_topics, user=cols["user"],
                                       topic=cols["topic"], history=history_bag)
    gen = torch.Generator().manual_seed(0)
    n_items = b * c + (b + 1 if history_bag else 0)
    items = torch.randn(n_items, d, generator=gen, requires_grad=True)
    side = torch.randn(max(b, n_topics), 2 * d, generator=gen, requires_grad=True)
    topics = torch.randint(0, n_topics, (b, c), generator=gen)
    user, *chunks = model_module.HeadInputs.apply(items, side, layout, topics, torch.float32, 2)
    want_user = side[:b, cols["user"]]
    if history_bag:
        want_user = torch.cat([want_user, items[b * c:b * c + b]], 1)
    want_cand = torch.cat([items[:b * c].view(b, c, d), side[:, cols["topic"]][topics]], dim=2)
    got_cand = torch.cat(chunks)
    assert [x.shape[0] for x in chunks] == [2, 1]
    torch.testing.assert_close(user, want_user, rtol=0, atol=0)
    torch.testing.assert_close(got_cand, want_cand, rtol=0, atol=0)
    gu, gc = torch.randn_like(user), torch.randn_like(want_cand)
    got = torch.autograd.grad((user * gu).sum() + (got_cand * gc).sum(), [items, side])
    want = torch.autograd.grad((want_user * gu).sum() + (want_cand * gc).sum(), [items, side])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("one_hot", [False, True])
def test_sum_by_id_both_ways(one_hot):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (50,), generator=gen)
    rows = torch.randn(50, 3, generator=gen).to(torch.bfloat16)
    want = torch.stack([rows[ids == k].float().sum(0) for k in range(7)])  # id 6: no rows
    got = model_module.sum_by_id(ids, rows, 7, one_hot=one_hot)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_feature_columns():
    assert model_module.feature_columns(["topic", "user"], [8, 8]) == {
        "topic": slice(0, 8), "user": slice(8, 16)}


def test_history_padding_is_ignored_wherever_it_sits():
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    users, _, cands, topics = batch(torch.Generator().manual_seed(1), b=1)
    hists = [torch.tensor([[5, -1, 7, -1]]), torch.tensor([[-1, -1, 5, 7]]), torch.tensor([[5, 7]])]
    with torch.no_grad():
        scores = [scorer(users, h, cands, topics) for h in hists]
        other = scorer(users, torch.tensor([[5, 8]]), cands, topics)
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(other, scores[0])


def test_a_strided_history_scores_like_a_contiguous_one():
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    users, history, cands, topics = batch(torch.Generator().manual_seed(1), b=4, c=12, h=8)
    strided = history[:, ::2]  # (4, 4), not contiguous
    with torch.no_grad():
        torch.testing.assert_close(scorer(users, strided, cands, topics),
                                   scorer(users, strided.contiguous(), cands, topics))


def test_a_big_topic_table_warns_and_topic_rows_bound_the_lookups(monkeypatch):
    """Every call looks up each topic-table row once: too many rows warn, naming the fix;
    with topic_rows the call's topic bags are the table's rows, not the world's topics."""
    monkeypatch.setattr(model_module, "TOPIC_ROWS_WARN", 4)
    with pytest.warns(UserWarning, match="topic_rows"):
        build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    hashed = CPU.model_copy(update={"topic_rows": 3})
    scorer = build_scorer(hashed, U, I, T, torch.Generator().manual_seed(0))  # no warning
    users = batch(torch.Generator().manual_seed(1), b=1, c=4)[0]
    kjt = model_module.request_features(users, scorer.rows, scorer.n_ids)
    assert kjt.to_dict()["topic"].values().tolist() == [0, 1, 2]


@pytest.mark.parametrize("history_bag", [True, False])
def test_an_empty_batch_scores_to_an_empty_matrix(history_bag):
    cfg = CPU.model_copy(update={"history_bag": history_bag})
    scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    users, history, cands, topics = batch(torch.Generator().manual_seed(1), b=0, c=12)
    out = scorer(users, history, cands, topics)
    assert out.shape == (0, 12)
    out.sum().backward()  # and differentiates (to zero gradients)
    assert all(p.grad is None or not p.grad.any() for p in scorer.parameters())


def test_candidate_scores_do_not_depend_on_other_candidates():
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    users, history, cands, topics = batch(torch.Generator().manual_seed(1), b=3, c=5)
    with torch.no_grad():
        all_at_once = scorer(users, history, cands, topics)  # (3, 5)
        one_by_one = torch.cat(
            [scorer(users, history, cands[:, j:j + 1], topics[:, j:j + 1]) for j in range(5)], 1)
    torch.testing.assert_close(all_at_once, one_by_one, rtol=1e-5, atol=1e-6)


def test_without_history_bag_history_is_unused():
    cfg = CPU.model_copy(update={"history_bag": False})
    scorer = build_scorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    users, history, cands, topics = batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(scorer(users, history, cands, topics),
                                   scorer(users, history.flip(1), cands, topics))
    assert scorer.cand_in.in_features == 4 * 8


@pytest.mark.parametrize(
    "index, value, needle",
    [(2, I, r"candidates ids must be in \[0, 30\)"), (1, -2, "history ids"),
     (0, U, "users ids"), (3, T, "candidate_topics ids")],
)
def test_bad_ids_are_named(index, value, needle):
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = list(batch(torch.Generator().manual_seed(1)))
    x[index] = x[index].clone()
    x[index].view(-1)[0] = value
    with pytest.raises(ValueError, match=needle):
        scorer(*x)


def test_bad_shapes_are_named():
    scorer = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    users, history, cands, topics = batch(torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="candidate_topics must match"):
        scorer(users, history, cands, topics[:, :2])
    with pytest.raises(ValueError, match="users must be"):
        scorer(users[:2], history, cands, topics)


# ---- the trainable scorer -----------------------------------------------------------------
def test_trainable_and_plain_scorer_agree_at_init():
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    plain = build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1))
    with torch.no_grad():  # fbgemm's and torch's mean pooling may differ in the last bit
        torch.testing.assert_close(model.score(*x), plain(*x), rtol=1e-6, atol=1e-7)
    assert model.score(*x).shape == (6, 4)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
def test_fused_sparse_update_touches_only_looked_up_rows(optimizer):
    cfg = CPU.model_copy(update={"sparse_optimizer": optimizer})
    model = TrainableScorer(cfg, U, I, T, torch.Generator().manual_seed(0))
    for name in model_module.COLLECTIONS:  # both collections are sharded, fused TBE kernels
        ebc = getattr(model.dmp.module, name)
        kernels = {type(m).__name__ for lookup in ebc._lookups for m in lookup.modules()}
        assert {"BatchedFusedEmbeddingBag", "SplitTableBatchedEmbeddingBagsCodegen"} <= kernels
    before = {t: w.clone() for t, w in model.sparse_tables().items()}
    users, history, cands, topics = batch(torch.Generator().manual_seed(1))
    # Item 0 only as the padding bag's id (history_bags looks -1 padding up as row 0): its row
    # and optimizer state must not move.
    history[:, 3:] = -1
    history[history == 0], cands[cands == 0] = 1, 1
    logits = model.score(users, history, cands, topics)
    model.step(pointwise_bce(logits.flatten(), torch.ones(logits.numel())))
    # No table-sized dense gradient anywhere: tables have no .grad, only the head has grads.
    for name, p in model.dmp.named_parameters():
        assert (p.grad is None) == name.startswith(model_module.COLLECTIONS), name
    after = model.sparse_tables()
    touched = {"user": users, "item": torch.cat([cands.flatten(), history[history >= 0]]),
               "topic": topics.flatten()}
    for t, ids in touched.items():
        mask = torch.zeros(after[t].shape[0], dtype=torch.bool)
        mask[ids] = True
        changed = (after[t] != before[t]).any(dim=1)
        assert torch.equal(changed, mask), t
    state = model.sparse_optimizer_state()["item_ebc.embedding_bags.item.weight"]
    if optimizer == "sgd":
        assert state == {}
    else:
        (acc,) = state.values()  # (rows,) row-wise or (rows * D,) / (rows, D) per entry
        per_row = acc.reshape(I, -1).sum(1)
        mask = torch.zeros(I, dtype=torch.bool)
        mask[touched["item"]] = True
        assert torch.equal(per_row > 0, mask)


@pytest.mark.parametrize("b, c", [(6, 12), (6, 20), (2, 12)])
@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])
def test_gradient_rows_of_empty_bags_are_never_read(optimizer, b, c, monkeypatch):
    """HeadInputs leaves the gradient rows of the request collection's empty bags unwritten
    (user bags past the B requests when B < T = 5 topic rows, topic bags past the topic rows
    when B > T); NaN there must give bit-identical training (the TBE backward reads only rows
    of non-empty bags)."""
    cfg = CPU.model_copy(update={"sparse_optimizer": optimizer})
    x = batch(torch.Generator().manual_seed(1), b=b, c=c)
    clicks = torch.bernoulli(torch.full((b, c), 0.3), generator=torch.Generator().manual_seed(2))
    states = []
    for fill in (0.0, float("nan")):
        monkeypatch.setattr(model_module, "EMPTY_BAG_GRAD", fill)
        model = TrainableScorer(cfg, U, I, T, torch.Generator().manual_seed(0))
        for _ in range(2):
            model.step(pointwise_bce(model.score(*x).flatten(), clicks.flatten()))
        states.append(model.state_dict())
    zero, nan = states
    for k, v in zero["model"].items():
        assert torch.equal(v, nan["model"][k]), k
    for param, entries in zero["sparse_optimizer"].items():
        for k, v in entries.items():
            assert torch.equal(v, nan["sparse_optimizer"][param][k]), (param, k)


def test_scoring_without_grad_in_pieces_equals_one_call(monkeypatch):
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1), b=7, c=12)
    whole = model.score(*x).detach()  # with grad: always one call
    monkeypatch.setattr(model_module, "SCORE_CHUNK_ROWS", 24)  # pieces of 2 requests
    with torch.no_grad():
        torch.testing.assert_close(model.score(*x), whole, rtol=1e-6, atol=1e-7)


def test_supervised_steps_lower_the_loss():
    """Clicks follow a hidden user x item affinity; 30 BCE steps must beat the base rate."""
    gen = torch.Generator().manual_seed(0)
    cfg = CPU.model_copy(update={"sparse_lr": 0.1, "dense_lr": 1e-2})
    model = TrainableScorer(cfg, U, I, T, gen)
    users, history, cands, topics = batch(gen, b=64, c=8)
    true_logit = 3 * torch.randn(U, 2, generator=gen) @ torch.randn(2, I, generator=gen)
    clicks = torch.bernoulli(torch.sigmoid(true_logit[users[:, None], cands]), generator=gen)
    base = F.binary_cross_entropy(torch.full_like(clicks, clicks.mean().item()), clicks).item()
    losses = []
    for _ in range(30):
        loss = pointwise_bce(model.score(users, history, cands, topics).flatten(), clicks.flatten())
        model.step(loss)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert losses[-1] < base - 0.05


def test_frozen_copy_keeps_the_old_weights():
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1))
    frozen = model.frozen_copy()
    with torch.no_grad():
        start = model.score(*x)
    torch.testing.assert_close(frozen(*x), start, rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in frozen.parameters())
    for _ in range(3):
        model.step(pointwise_bce(model.score(*x).flatten(), torch.zeros(24)))
    with torch.no_grad():
        torch.testing.assert_close(frozen(*x), start, rtol=1e-6, atol=1e-7)
        assert (model.score(*x) - start).abs().max() > 1e-3


def test_dense_parameters_are_the_head():
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    dense = model.dense_parameters()
    assert "user_in.weight" in dense
    assert not any(n.startswith(model_module.COLLECTIONS) for n in dense)
    n_head = sum(p.numel() for p in dense.values())
    d, w = 8, 16
    assert n_head == (2 * d * w + w) + 6 * d * w + (w * w + w) + (w + 1)
    assert {t: tuple(v.shape) for t, v in model.sparse_tables().items()} == {
        "user": (U, d), "item": (I, d), "topic": (T, d)}


def test_state_dict_roundtrip_and_mismatch():
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1))
    model.step(pointwise_bce(model.score(*x).flatten(), torch.ones(24)))
    saved = {k: v for k, v in model.state_dict().items()}
    saved = torch.utils._pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, saved)
    with torch.no_grad():
        want = model.score(*x)
    model.step(pointwise_bce(model.score(*x).flatten(), torch.ones(24)))
    model.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(model.score(*x), want)
    other = TrainableScorer(CPU.model_copy(update={"user_rows": 7}), U, I, T,
                            torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="embedding_bags.user.weight: saved shape"):
        other.load_state_dict(saved)
    # all or nothing: a state whose optimizer does not match changes nothing
    sgd = TrainableScorer(CPU.model_copy(update={"sparse_optimizer": "sgd"}), U, I, T,
                          torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = sgd.score(*x)
    with pytest.raises(ValueError, match="sparse_optimizer"):
        sgd.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(sgd.score(*x), before)


def test_a_state_saved_with_one_collection_still_loads():
    """Checkpoints written before the tables were split into two collections name every table
    ``ebc.embedding_bags.<table>.weight``: they load into today's model, the same tensors."""
    model = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    x = batch(torch.Generator().manual_seed(1))
    model.step(pointwise_bce(model.score(*x).flatten(), torch.ones(24)))
    state = torch.utils._pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v,
                                         model.state_dict())
    legacy = {f"{name}.embedding_bags.{t}.weight": f"ebc.embedding_bags.{t}.weight"
              for t, name in model_module.TABLE_COLLECTION.items()}
    old = {**state, "model": {legacy.get(k, k): v for k, v in state["model"].items()},
           "sparse_optimizer": {legacy[k]: v for k, v in state["sparse_optimizer"].items()}}
    for group in old["dense_optimizer"]["param_groups"]:  # Adam was not fused then
        group["fused"] = None
    assert "ebc.embedding_bags.item.weight" in old["model"]
    fresh = TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(9))
    fresh.load_state_dict(old)
    with torch.no_grad():
        assert torch.equal(fresh.score(*x), model.score(*x))
    for table, w in fresh.sparse_tables().items():
        assert torch.equal(w, model.sparse_tables()[table]), table
    assert model_module.upgrade_state(state) is state  # today's keys: unchanged
    assert all(g["fused"] for g in fresh.dense_optimizer.param_groups)
    fresh.step(pointwise_bce(fresh.score(*x).flatten(), torch.ones(24)))  # and trains
    model.step(pointwise_bce(model.score(*x).flatten(), torch.ones(24)))
    for name, p in fresh.dense_parameters().items():
        torch.testing.assert_close(p, model.dense_parameters()[name], rtol=0, atol=0, msg=name)


def test_init_scale_is_as_documented():
    scorer = build_scorer(ModelConfig(device="cpu", embedding_init_std=0.05), 2000, 10, 3,
                          torch.Generator().manual_seed(0))
    std = scorer.table_weights()["user"].std().item()
    assert abs(std - 0.05) < 0.002
    w = scorer.user_in.weight
    assert w.abs().max() <= 1 / math.sqrt(w.shape[1])



def test_building_leaves_global_rng_alone():
    before = torch.get_rng_state()
    TrainableScorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    build_scorer(CPU, U, I, T, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
