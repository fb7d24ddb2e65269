"""Candidate generation: C distinct items per request from a fixed, policy-independent retrieval mix.

Sources (shares in :class:`simulators.config.CandidateConfig`, counts by largest remainder):

- ``interest``: pick one of the user's modes by its weight, then a topic with probability
  softmax(interest_sharpness * <mode, topic centre>), then an item of that topic uniformly.
- ``popular``: items in proportion to (clicks + 1)^popularity_exponent, from the counters as they
  stood when the day's index was built (retrieval indexes are rebuilt daily in production too).
- ``fresh``: uniformly among items born in the last ``fresh_days`` days (they have the highest ids).
- ``random``: uniformly over the catalogue *without* replacement, cheaply: a daily random
  permutation of the catalogue read at a random start with a random stride
  (``perm[(a + s*j) mod I]``, ``s*(n-1) < I``; the permutation is stored twice, so no modulo).
  Every item is equally likely at every position and the ids of a row are distinct; as item
  attributes are drawn independently per id, the row's attributes are independent draws, like
  RecSim's freshly sampled documents, using two random numbers per request instead of C.

A repeated id is redrawn from its column's source (then, for a source too small to fill its
share, uniformly; a row that keeps colliding falls back to a ``random`` row). When several sources
are mixed, columns are shuffled (a random column permutation per batch plus a random rotation per
row), so a candidate's position says nothing about its source.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from simulators.config import CandidateConfig
from simulators.ground_truth import take_rows
from simulators.world import World

SOURCES = ("interest", "popular", "fresh", "random")


@dataclass
class RetrievalIndex:
    """Per-day lookup structures for the retrieval sources."""

    perm2: torch.Tensor  # (2I,) a random permutation of item ids, twice (the `random` source)
    by_topic: torch.Tensor  # (I,) item ids sorted by topic
    topic_start: torch.Tensor  # (T,) offset of each topic in by_topic
    topic_count: torch.Tensor  # (T,) items per topic
    popular_cdf: torch.Tensor  # (I,) float64 cumulative popularity weights
    fresh_start: int  # first id of the `fresh` window (ids grow with birth day)


def source_counts(cfg: CandidateConfig) -> dict[str, int]:
    """Candidates per source, summing to C (largest-remainder rounding, ties in SOURCES order)."""
    c = cfg.n_candidates
    raw = {s: getattr(cfg, s) * c for s in SOURCES}
    counts = {s: int(raw[s]) for s in SOURCES}
    rest = c - sum(counts.values())
    for s in sorted(SOURCES, key=lambda s: -(raw[s] - counts[s]))[:rest]:
        counts[s] += 1
    return counts


def build_index(world: World, gen: torch.Generator) -> RetrievalIndex:
    """Build the retrieval index for the world's current day and catalogue."""
    items, cfg, device = world.items, world.cfg.candidates, world.device
    n = world.n_items
    perm = torch.randperm(n, generator=gen, device=device)
    perm2 = torch.cat([perm, perm])  # reading at a + s*j < 2I wraps around without a modulo
    by_topic = torch.argsort(items.topic, stable=True)
    topic_count = torch.bincount(items.topic, minlength=world.n_topics)
    topic_start = torch.cumsum(topic_count, 0) - topic_count
    weights = (items.popularity.double() + 1.0).pow(cfg.popularity_exponent)
    first_fresh_day = world.day - cfg.fresh_days + 1
    fresh_start = int(torch.searchsorted(items.birth_day, first_fresh_day).item())
    if fresh_start >= n:  # no item in the window: use the newest day's items
        fresh_start = int(torch.searchsorted(items.birth_day, items.birth_day[-1]).item())
    return RetrievalIndex(
        perm2=perm2, by_topic=by_topic, topic_start=topic_start,
        topic_count=topic_count, popular_cdf=torch.cumsum(weights, 0), fresh_start=fresh_start,
    )


def _random_rows(index: RetrievalIndex, b: int, n: int, gen: torch.Generator,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """(b, n) distinct uniform ids per row: perm[(a + s*j) mod I] with s*(n-1) < I."""
    size = index.perm2.shape[0] // 2
    device = index.perm2.device
    dtype = torch.int32 if size < 2**30 else torch.long
    max_stride = max(1, (size - 1) // max(n - 1, 1))
    a = torch.randint(0, size, (b, 1), generator=gen, device=device, dtype=dtype)
    s = torch.randint(1, max_stride + 1, (b, 1), generator=gen, device=device, dtype=dtype)
    pos = (torch.arange(n, device=device, dtype=dtype) * s).add_(a)  # (b, n), < 2 * size
    if out is None:
        return take_rows(index.perm2, pos)
    torch.index_select(index.perm2, 0, pos.view(-1), out=out.view(-1))
    return out


def _interest_rows(world: World, index: RetrievalIndex, users: torch.Tensor, n: int,
                   gen: torch.Generator) -> torch.Tensor:
    """(B, n) ids from topics near the users' modes (with replacement)."""
    cfg = world.cfg.candidates
    b, device = users.shape[0], world.device
    z = take_rows(world.users.interests, users)  # (B, M, D)
    w = take_rows(world.users.mode_weights, users)  # (B, M)
    topic_logits = cfg.interest_sharpness * (z @ world.topic_centres.T)  # (B, M, T)
    p = (w.unsqueeze(2) * torch.softmax(topic_logits, dim=2)).sum(1)  # (B, T)
    p = p * (index.topic_count > 0)  # never pick an empty topic
    cdf = torch.cumsum(p, dim=1)  # (B, T)
    # u > 0, so the first topic with cdf >= u has positive mass (u = 0 would pick a leading
    # empty topic); u <= cdf[:, -1] keeps it in range.
    u = (torch.rand(b, n, generator=gen, device=device) * cdf[:, -1:]).clamp_min_(
        torch.finfo(cdf.dtype).tiny)
    topic = torch.searchsorted(cdf, u).clamp_(max=world.n_topics - 1)  # (B, n)
    count = index.topic_count[topic]  # (B, n)
    offset = (torch.rand(b, n, generator=gen, device=device) * count).long()
    offset = torch.minimum(offset, count - 1)
    return index.by_topic[index.topic_start[topic] + offset]


def _popular_rows(index: RetrievalIndex, b: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(b, n) ids in proportion to popularity weights (with replacement)."""
    cdf = index.popular_cdf
    u = torch.rand(b, n, generator=gen, device=cdf.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u).clamp_(max=cdf.shape[0] - 1)


def _fresh_rows(index: RetrievalIndex, b: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(b, n) ids uniform in the fresh window (with replacement)."""
    size = index.perm2.shape[0] // 2 - index.fresh_start
    u = torch.rand(b, n, generator=gen, device=index.perm2.device)
    return index.fresh_start + (u * size).long().clamp_(max=size - 1)


def _draw(source: str, world: World, index: RetrievalIndex, users: torch.Tensor, n: int,
          gen: torch.Generator) -> torch.Tensor:
    """(B, n) ids from one source for users (B,)."""
    b = users.shape[0]
    if source == "interest":
        return _interest_rows(world, index, users, n, gen)
    if source == "popular":
        return _popular_rows(index, b, n, gen)
    if source == "fresh":
        return _fresh_rows(index, b, n, gen)
    return _random_rows(index, b, n, gen)


def _fix_duplicates(cand: torch.Tensor, col_source: list[str], world: World,
                    index: RetrievalIndex, users: torch.Tensor, gen: torch.Generator,
                    same_source_rounds: int = 16, max_rounds: int = 32) -> torch.Tensor:
    """Redraw repeated ids (the later column of each pair) until every row is distinct, in place:
    first from the column's own source, then (a source too small to fill its share, e.g. few
    fresh items) uniformly from the catalogue; rows still colliding become ``random`` rows."""
    n_items = index.perm2.shape[0] // 2
    names = sorted(set(col_source))
    src_of_col = torch.tensor([names.index(x) for x in col_source], device=cand.device)  # (C,)
    check = torch.arange(cand.shape[0], device=cand.device)  # rows that may hold a repeat
    for round_ in range(max_rounds):
        sorted_ids, order = torch.sort(cand[check], dim=1, stable=True)
        dup = sorted_ids[:, 1:] == sorted_ids[:, :-1]  # (B', C-1)
        sub, cols = dup.nonzero(as_tuple=True)
        if sub.numel() == 0:
            return cand
        rows = check[sub]  # (P,)
        pos = order[sub, cols + 1]  # (P,) the later column of each repeated pair
        check = torch.unique(rows)
        if round_ >= same_source_rounds:
            cand[rows, pos] = torch.randint(0, n_items, (rows.numel(),), generator=gen,
                                            device=cand.device)
            continue
        src = src_of_col[pos]
        for k, name in enumerate(names):
            sel = (src == k).nonzero().squeeze(1)
            if sel.numel():
                r = rows[sel]
                cand[r, pos[sel]] = _draw(name, world, index, users[r], 1, gen).squeeze(1)
    sorted_ids, _ = torch.sort(cand[check], dim=1)
    bad = check[(sorted_ids[:, 1:] == sorted_ids[:, :-1]).any(dim=1)]
    if bad.numel():  # tiny catalogue: fall back to distinct uniform rows
        cand[bad] = _random_rows(index, bad.numel(), cand.shape[1], gen)
    return cand


def sample_candidates(world: World, users: torch.Tensor, gen: torch.Generator,
                      index: RetrievalIndex | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """C distinct candidate item ids for each user's request, (B, C) long (written to ``out``
    when given: a contiguous (B, C) long tensor).

    ``index`` is the day's retrieval index (:func:`build_index`); without one, a new index is
    built from ``gen`` first, so the result depends on the world and ``gen`` only (a day builds
    its index once and passes it to every batch)."""
    if index is None:
        index = build_index(world, gen)
    counts = source_counts(world.cfg.candidates)
    b = users.shape[0]
    c = world.cfg.candidates.n_candidates
    if counts["random"] == c:  # distinct by construction
        return _random_rows(index, b, c, gen, out)
    active = [name for name in SOURCES if counts[name]]
    parts = [_draw(name, world, index, users, counts[name], gen) for name in active]
    col_source = [name for name in active for _ in range(counts[name])]
    cand = _fix_duplicates(torch.cat(parts, dim=1), col_source, world, index, users, gen)
    if len(parts) > 1:  # hide the source order: column permutation + per-row rotation
        col = torch.randperm(c, generator=gen, device=cand.device)
        rot = torch.randint(0, c, (b, 1), generator=gen, device=cand.device)
        return torch.gather(cand, 1, col[(torch.arange(c, device=cand.device) + rot) % c], out=out)
    if out is not None:
        out.copy_(cand)
        return out
    return cand
