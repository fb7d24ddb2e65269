"""The day driver: sample the day's requests, serve them in batches through any slate policy,
sample clicks, update the state, then apply the day's dynamics and item arrivals.

A slate policy is any callable ``policy(requests) -> (slates, log_propensity)`` with slates (B, K)
integer positions into ``requests.candidates`` and log_propensity (B,) the log-probability with
which the policy chose each slate. The driver checks both (shape, range, duplicates, NaN) and
raises :class:`PolicyOutputError` with the fix.

Order of one day (random streams are split from ``gen``: requests, retrieval, responses, dynamics):

1. build the day's retrieval index; each active user makes a request with probability equal to
   their activity rate (at most one a day); requests are served in random order;
2. per batch: candidates -> policy -> true probabilities -> clicks -> history, popularity,
   reinforcement, fatigue and satisfaction updates -> ``on_batch(batch_log)`` (a streaming trainer
   updates the policy here, so the next batch is served by the updated policy);
3. end of day: retention (churn/return), interest drift, fatigue and popularity decay, the day
   advances, new items arrive.

Speed (CPU): every batch writes straight into day-sized log buffers (no concatenation), reused
across days once the caller dropped the old log (:mod:`simulators.buffers`); the batches'
requests (candidates, cohorts, histories) can be prepared ahead in a second thread
(:mod:`simulators.prefetch`), bit-identically, since a batch's requests depend on nothing an
earlier batch changes.

Several processes (``shard``, :mod:`simulators.shard`): each serves its own users' requests of
the day in lockstep batches and the processes exchange rows and user state after every batch,
so every process ends each batch with the whole world and log.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch

from simulators import choice, dynamics
from simulators.buffers import BufferPool
from simulators.candidates import RetrievalIndex, build_index, sample_candidates
from simulators.expect import expect
from simulators.ground_truth import click_probs, take_rows
from simulators.prefetch import Prefetcher
from simulators.records import _ROW_FIELDS, DayLog, Policy, PolicyOutputError, Requests
from simulators.rng import check_generator, child_generator
from simulators.shard import UserShard
from simulators.world import Users, World, append_items

__all__ = [
    "DayLog",
    "Policy",
    "PolicyOutputError",
    "Requests",
    "check_policy_output",
    "make_requests",
    "respond",
    "sample_day_users",
    "serve_batch",
    "simulate_day",
]


def sample_day_users(world: World, gen: torch.Generator) -> torch.Tensor:
    """Users who make a request today, in random serving order, (R,)."""
    u = world.users
    draw = torch.rand(u.activity.shape, generator=gen, device=world.device)
    who = torch.nonzero(u.active & (draw < u.activity)).squeeze(1)  # (R,)
    return who[torch.randperm(who.shape[0], generator=gen, device=world.device)]


def make_requests(world: World, users: torch.Tensor, gen: torch.Generator,
                  request_id: torch.Tensor | None = None, index: RetrievalIndex | None = None,
                  out: torch.Tensor | None = None) -> Requests:
    """Requests for ``users`` (B,) with fresh candidates (written to ``out`` (B, C) when given);
    the state is not changed."""
    candidates = sample_candidates(world, users, gen, index, out)  # (B, C)
    if request_id is None:
        request_id = torch.arange(users.shape[0], device=world.device)
    return Requests(
        day=world.day, request_id=request_id, users=users,
        cohort=take_rows(world.users.cohort, users),
        history=take_rows(world.users.history, users),
        candidates=candidates, item_topic=world.items.topic,
    )


def check_policy_output(out, requests: Requests,
                        slate_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``policy(requests)``'s output; return (slates long (B, K), log_propensity (B,))."""
    if not (isinstance(out, tuple) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        raise PolicyOutputError(
            f"a slate policy must return a tuple (slates, log_propensity) of two tensors, got "
            f"{type(out).__name__}")
    slates, logp = out
    b, c = requests.candidates.shape
    if slates.dtype.is_floating_point or slates.dtype == torch.bool or slates.is_complex():
        raise PolicyOutputError(
            f"slates have dtype {slates.dtype}: they must be integer positions into the candidates "
            "(use .long())")
    if tuple(slates.shape) != (b, slate_size):
        raise PolicyOutputError(
            f"slates have shape {tuple(slates.shape)}, expected (B, K) = ({b}, {slate_size}): one "
            "row of K candidate positions per request")
    if tuple(logp.shape) != (b,) or not logp.dtype.is_floating_point:
        raise PolicyOutputError(
            f"log_propensity has shape {tuple(logp.shape)} and dtype {logp.dtype}, expected a float "
            f"tensor of shape ({b},): the log-probability of each served slate")
    if slates.device != requests.candidates.device or logp.device != requests.candidates.device:
        raise PolicyOutputError(
            f"policy output is on {slates.device}/{logp.device} but the requests are on "
            f"{requests.candidates.device}: return tensors on the requests' device")
    slates = slates.long()
    if b == 0:
        return slates, logp
    # A slate tensor broadcast over rows (stride 0, e.g. ``expand``) holds one distinct row.
    rows = slates[:1] if b > 1 and slates.stride(0) == 0 else slates
    lo, hi = torch.aminmax(rows)
    out_of_range = (lo < 0) | (hi >= c)
    # Duplicates: count each candidate position's occurrences in its row (K < 2^8 fits uint8).
    small = torch.uint8 if slate_size < 2**8 else torch.int32
    count = torch.zeros(rows.shape[0], c, dtype=small, device=rows.device)
    count.scatter_add_(1, rows.clamp(0, c - 1),
                       torch.ones(1, dtype=small, device=rows.device).expand(rows.shape))
    # Checked on the device (simulators.expect): no host round trip per batch on CUDA.
    where = f"positions in [0, {c}) into the candidates"
    expect(~out_of_range, PolicyOutputError, f"slates must be {where}",
           lambda: f"slates must be {where}; {_bad_row((slates < 0) | (slates >= c), slates)}")
    repeated = count.amax(dim=1) > 1  # (B',) rows that repeat a candidate (if all in range)
    how = "(sample without replacement, e.g. Gumbel-top-k)"
    expect(out_of_range | ~repeated.any(), PolicyOutputError,
           f"slates must not repeat a candidate {how}",
           lambda: f"slates must not repeat a candidate; {_bad_row(repeated, rows)} {how}")
    bad_logp = ~torch.isfinite(logp) | (logp > 1e-4)  # (B,)
    expect(~bad_logp.any(), PolicyOutputError,
           "log_propensity must be finite and <= 0 (a log-probability)",
           lambda: "log_propensity must be finite and <= 0 (a log-probability); "
                   f"{_bad_row(bad_logp, logp)}")
    return slates, logp


def _bad_row(flags: torch.Tensor, values: torch.Tensor) -> str:
    """'row r is <values[r]>' for the first row r of flags (B,) or (B, K) with a True entry
    (reads the device: for error messages only)."""
    row = int((flags if flags.dim() == 1 else flags.any(dim=1)).nonzero()[0])
    value = values[row]
    return f"row {row} is {value.tolist() if value.dim() else float(value)}"


def _index_dtype(numel: int) -> torch.dtype:
    """int32 for index arithmetic when it fits (int64 products are slow on CPUs without AVX-512)."""
    return torch.int32 if numel < 2**31 else torch.long


def apply_feedback(world: World, users: torch.Tensor, items: torch.Tensor, clicks: torch.Tensor,
                   gen: torch.Generator, *, chosen: torch.Tensor | None = None) -> None:
    """Write the effects of served slates into the state: history, popularity, reinforcement,
    fatigue, satisfaction. users (B,) must be distinct; items, clicks (B, K).

    Optional shortcut (same result): ``chosen`` (B, 1) the clicked position of each row, K for
    none, when the choice model allows at most one click (:func:`simulators.choice.sample_choice`).
    """
    cfg, st, it = world.cfg, world.users, world.items
    dyn = cfg.dynamics
    one_click = choice.at_most_one_click(cfg.choice)
    recsim = dyn.reinforcement.enabled and dyn.reinforcement.rule == "recsim"
    if one_click or recsim:  # the first clicked position of each slate
        if chosen is not None and one_click:
            chosen = chosen.view(-1)
            has_click = chosen < items.shape[1]  # (B,)
            first = torch.where(has_click, chosen, 0)  # (B,) position 0 when no click, as max
        else:
            top, first = clicks.max(dim=1)  # (B,), (B,) first position holding the maximum
            has_click = top > 0
        first_item = items.gather(1, first.unsqueeze(1)).squeeze(1)  # (B,)
    if cfg.history_len > 0:
        old = take_rows(st.history, users)  # (B, H) (not the requests': a policy may alter those)
        if one_click:
            new = dynamics.push_one(old, first_item, has_click)
        else:
            new = dynamics.push_history(old, items, clicks)
        st.history.index_copy_(0, users, new)
    if one_click:  # one click at most: add the clicked items only (the other terms are + 0)
        it.popularity.index_add_(0, first_item, has_click.to(it.popularity.dtype))
    else:
        it.popularity.index_add_(0, items.reshape(-1), clicks.reshape(-1))
    if recsim:
        _reinforce_recsim(world, users, first_item, has_click, gen)
    elif dyn.reinforcement.enabled:
        z = take_rows(st.interests, users)  # (B, M, D)
        new = dynamics.reinforce_toward(
            z, take_rows(st.mode_weights, users), take_rows(it.emb, items), clicks,
            dyn.reinforcement.rate, cfg.choice.mode_sharpness)
        if cfg.users.clip_interests:
            new.clamp_(-1.0, 1.0)
        st.interests.index_copy_(0, users, new)
    if st.fatigue is not None:
        new = dynamics.add_exposure(take_rows(st.fatigue, users), take_rows(it.topic, items))
        st.fatigue.index_copy_(0, users, new)
    if dyn.retention.enabled:
        request = dynamics.request_satisfaction(clicks, take_rows(it.quality, items),
                                                dyn.retention.quality_weight)
        new = dynamics.update_satisfaction(take_rows(st.satisfaction, users), request,
                                           dyn.retention.memory)
        st.satisfaction.index_copy_(0, users, new)


def _reinforce_recsim(world: World, users: torch.Tensor, item: torch.Tensor,
                      has_click: torch.Tensor, gen: torch.Generator) -> None:
    """RecSim's rule on the clicked item's topic coordinate of the user's most responsible mode."""
    st = world.users
    _, m, t = st.interests.shape
    flat_interests = st.interests.view(-1)
    idx_dtype = _index_dtype(flat_interests.numel())
    u = torch.rand(users.shape, generator=gen, device=users.device)  # (B,) drawn for every row
    topic = take_rows(world.items.topic, item).to(idx_dtype)  # (B,)
    row = users.to(idx_dtype) * (m * t) + topic  # (B,) offset of mode 0's coordinate
    if m > 1:
        offsets = torch.arange(m, device=users.device, dtype=idx_dtype) * t  # (M,)
        mode_x = take_rows(flat_interests, row.unsqueeze(1) + offsets)  # (B, M)
        score = world.cfg.choice.mode_sharpness * mode_x + torch.log(
            take_rows(st.mode_weights, users))
        row = row + score.argmax(dim=1).to(idx_dtype) * t
    x = take_rows(flat_interests, row)  # (B,)
    new_x = torch.where(has_click, dynamics.recsim_interest_step(x, u, world.cfg.dynamics
                                                                 .reinforcement.rate), x)
    flat_interests.index_copy_(0, row.long(), new_x)  # rows are distinct: users are


def end_of_day(world: World, day_users: torch.Tensor, gen: torch.Generator) -> None:
    """Retention, drift, fatigue and popularity decay; advance the day; new items arrive."""
    cfg, st = world.cfg, world.users
    dyn = cfg.dynamics
    if dyn.retention.enabled:
        requested = torch.zeros_like(st.active).index_fill_(0, day_users, True)
        st.active = dynamics.churn(st.active, st.satisfaction, requested, dyn.retention, gen)
    if dyn.drift.enabled:
        centres = world.cohort_centres[st.cohort]  # (U, M, D)
        st.interests = dynamics.drift(st.interests, centres, dyn.drift.pull, dyn.drift.noise, gen)
        if cfg.users.clip_interests:
            st.interests.clamp_(-1.0, 1.0)
    if st.fatigue is not None:
        st.fatigue.mul_(dyn.fatigue.decay)
    world.items.popularity.mul_(cfg.items.popularity_decay)
    world.day += 1
    append_items(world, cfg.items.items_per_day, gen)


def _serve_into(world: World, requests: Requests, policy: Policy, gen: torch.Generator,
                log: DayLog) -> DayLog:
    """Serve one batch, writing slates, items, propensities, probabilities and clicks into the
    (B, ...) tensors of ``log`` (whose other fields are the requests'); return ``log``."""
    slates, logp = check_policy_output(policy(requests), requests, world.cfg.slate_size)
    if len(log) == 0:  # a process's empty batch (simulators.shard): the policy was still asked
        return log
    log.slates.copy_(slates)
    log.log_propensity.copy_(logp)
    items = torch.gather(requests.candidates, 1, log.slates, out=log.items)  # (B, K)
    log.true_probs.copy_(click_probs(world, requests.users, items))  # before the state changes
    chosen = None
    if choice.at_most_one_click(world.cfg.choice):
        chosen = choice.sample_choice(log.true_probs, gen)  # (B, 1) clicked position, K: none
        log.clicks.copy_(torch.arange(items.shape[1], device=items.device) == chosen)
    else:
        log.clicks.copy_(choice.sample_independent(log.true_probs, gen))
    apply_feedback(world, requests.users, items, log.clicks, gen, chosen=chosen)
    return log


def _empty_log(world: World, n: int, pool: BufferPool | None = None) -> DayLog:
    """A DayLog of ``n`` uninitialised rows (from ``pool`` when given)."""
    cfg, dev = world.cfg, world.device
    c, k, h = cfg.candidates.n_candidates, cfg.slate_size, cfg.history_len

    def empty(name, *shape, dtype=torch.long):
        if pool is None:
            return torch.empty(n, *shape, dtype=dtype, device=dev)
        return pool.empty(name, (n, *shape), dtype, dev)

    return DayLog(
        day=empty("day"), request_id=empty("request_id"), users=empty("users"),
        cohort=empty("cohort"), history=empty("history", h), candidates=empty("candidates", c),
        slates=empty("slates", k), items=empty("items", k),
        clicks=empty("clicks", k, dtype=torch.float), log_propensity=empty("log_propensity",
                                                                             dtype=torch.float),
        true_probs=empty("true_probs", k, dtype=torch.float), item_topic=world.items.topic,
    )


def _rows(log: DayLog, start: int, stop: int) -> DayLog:
    """Rows start:stop of ``log`` as views."""
    return DayLog(**{f: getattr(log, f)[start:stop] for f in _ROW_FIELDS},
                  item_topic=log.item_topic)


def _fill_requests(world: World, log: DayLog, gen: torch.Generator, index: RetrievalIndex) -> None:
    """Write the requests of the rows of ``log`` (users set): candidates, cohorts, histories."""
    if len(log) == 0:
        return
    sample_candidates(world, log.users, gen, index, log.candidates)
    torch.index_select(world.users.cohort, 0, log.users, out=log.cohort)
    torch.index_select(world.users.history, 0, log.users, out=log.history)


def _requests_of(world: World, log: DayLog) -> Requests:
    """The requests whose tensors are the rows of ``log``."""
    return Requests(day=world.day, request_id=log.request_id, users=log.users, cohort=log.cohort,
                    history=log.history, candidates=log.candidates,
                    item_topic=world.items.topic)


def _available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _prefetch_default(world: World, n_batches: int) -> bool:
    """Requests prepared in a second thread: on CPU, with several batches, with 2+ cores."""
    return world.device.type == "cpu" and n_batches > 1 and _available_cores() > 1


def serve_batch(world: World, requests: Requests, policy: Policy, gen: torch.Generator) -> DayLog:
    """Serve one batch: policy -> checks -> true probabilities -> clicks -> state updates."""
    b, k, dev = len(requests), world.cfg.slate_size, world.device
    log = DayLog(
        day=torch.full((b,), requests.day, dtype=torch.long, device=dev),
        request_id=requests.request_id, users=requests.users, cohort=requests.cohort,
        history=requests.history, candidates=requests.candidates,
        slates=torch.empty(b, k, dtype=torch.long, device=dev),
        items=torch.empty(b, k, dtype=torch.long, device=dev),
        clicks=torch.empty(b, k, device=dev), log_propensity=torch.empty(b, device=dev),
        true_probs=torch.empty(b, k, device=dev), item_topic=requests.item_topic)
    return _serve_into(world, requests, policy, gen, log)


def simulate_day(world: World, policy: Policy, gen: torch.Generator, batch_size: int = 8192,
                 on_batch: Callable[[DayLog], None] | None = None, *,
                 prefetch: bool | None = None, shard: UserShard | None = None) -> DayLog:
    """Simulate one day of requests served by ``policy``; mutates ``world``; returns the day's log.

    The log's tensors are day-sized buffers that the batches write into (the logs passed to
    ``on_batch`` are row views of them); their memory comes from ``world.day_buffers`` and is
    reused on a later day only once no tensor made from this log is alive.

    ``prefetch``: prepare the batches' requests (candidates, cohorts, histories) in a background
    thread, ahead of serving (default: on CPU when the process may use two or more cores). They read
    only the day's retrieval index and the state of the batch's own users, which no earlier batch
    changes (a user requests at most once a day), so the results are bit-identical either way,
    provided ``policy`` and ``on_batch`` do not change the state of users still to be served.

    ``shard``: one of several processes simulating this world together (every process calls
    this with the same world, the same ``gen`` state and the same ``batch_size``; see
    :mod:`simulators.shard`). This process serves its own users' requests, in batches of up to
    ``batch_size`` (every process serves as many batches as the busiest one; ``policy`` may get
    empty batches and must still take part in its collectives); after each batch the processes
    exchange their rows and their users' new state, ``on_batch`` gets the batch's rows of every
    process, and the returned log is the whole day's, in serving order, on every process.
    """
    check_generator(gen, world.device)
    if batch_size <= 0:
        raise ValueError(f"batch_size = {batch_size}: must be a positive number of requests")
    g_requests, g_retrieval, g_response, g_dynamics = (child_generator(gen) for _ in range(4))
    index = build_index(world, g_retrieval)
    day_users = sample_day_users(world, g_requests)  # (R,)
    n_requests = day_users.shape[0]
    if n_requests == 0:
        end_of_day(world, day_users, g_dynamics)
        return DayLog.empty(world.items.topic, world.cfg.candidates.n_candidates,
                            world.cfg.slate_size, world.cfg.history_len)
    if not isinstance(world.day_buffers, BufferPool):
        world.day_buffers = BufferPool()
    day_log = _empty_log(world, n_requests, world.day_buffers)
    day_log.day.fill_(world.day)
    torch.arange(n_requests, out=day_log.request_id)
    day_log.users.copy_(day_users)
    if shard is None:
        batches = [_rows(day_log, a, min(a + batch_size, n_requests))
                   for a in range(0, n_requests, batch_size)]
    else:  # this process's requests (their day, request_id and users are set), in lockstep
        mine = day_log.select(torch.nonzero(shard.owns(day_users)).squeeze(1))  # (R_p, ...)
        n = len(mine)
        n_batches = shard.agree(-(-n // batch_size))
        batches = [_rows(mine, min(a, n), min(a + batch_size, n))
                   for a in range(0, n_batches * batch_size, batch_size)]
        g_retrieval, g_response = shard.fork(g_retrieval), shard.fork(g_response)
    retrieve = [functools.partial(_fill_requests, world, rows, g_retrieval, index)
                for rows in batches]
    if prefetch is None:
        prefetch = _prefetch_default(world, len(batches))
    with Prefetcher(retrieve) if prefetch else contextlib.nullcontext() as ahead:
        for i, rows in enumerate(batches):
            if ahead is None:
                retrieve[i]()
            else:
                ahead.wait(i)
            _serve_into(world, _requests_of(world, rows), policy, g_response, rows)
            if shard is not None:
                rows = _share_batch(world, rows, shard, day_log)
            if on_batch is not None:
                on_batch(rows)
    end_of_day(world, day_users, g_dynamics)
    return day_log


def _share_batch(world: World, rows: DayLog, shard: UserShard, day_log: DayLog) -> DayLog:
    """Every process's rows of this batch round (a collective): written into ``day_log`` at
    their request ids and returned; the other processes' users get their new state
    (:attr:`Users.SERVED_FIELDS`) and their clicks count towards item popularity, so the world
    is again the same on every process."""
    fields = [f for f in Users.SERVED_FIELDS if getattr(world.users, f) is not None]
    state = [take_rows(getattr(world.users, f), rows.users) for f in fields]
    parts = shard.gather_rows([getattr(rows, f) for f in _ROW_FIELDS] + state)
    batch = DayLog(**dict(zip(_ROW_FIELDS, parts)), item_topic=rows.item_topic)
    for name, new in zip(fields, parts[len(_ROW_FIELDS):]):  # own rows: a copy of themselves
        getattr(world.users, name).index_copy_(0, batch.users, new)
    popularity = world.items.popularity  # the others' clicks (masks, not indices: no host sync)
    remote = (~shard.owns(batch.users)).unsqueeze(1)  # (B_all, 1)
    popularity.index_add_(0, batch.items.reshape(-1),
                          (batch.clicks * remote).reshape(-1).to(popularity.dtype))
    for name in _ROW_FIELDS:
        getattr(day_log, name).index_copy_(0, batch.request_id, getattr(batch, name))
    return batch


def respond(world: World, users: torch.Tensor, slate_items: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    """Clicks (B, K) for any slates of item ids (B, K), without changing the state."""
    return choice.sample_clicks(world.cfg.choice, click_probs(world, users, slate_items), gen)

