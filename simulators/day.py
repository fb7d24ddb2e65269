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
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from simulators import choice, dynamics
from simulators.candidates import RetrievalIndex, build_index, sample_candidates
from simulators.ground_truth import click_probs, take_rows
from simulators.records import DayLog, Policy, PolicyOutputError, Requests
from simulators.rng import check_generator, child_generator
from simulators.world import World, append_items

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
    lo, hi = torch.aminmax(slates)
    out_of_range = (lo < 0) | (hi >= c)
    # Duplicates: write each position's slot number k into a (B, C) table and read it back; a
    # repeated candidate keeps only one writer, so some k reads back wrong.
    safe = slates.clamp(0, c - 1)
    small = torch.uint8 if slate_size < 2**8 else torch.int32
    slot = torch.arange(slate_size, device=slates.device, dtype=small).expand(b, slate_size)
    table = torch.zeros(b, c, dtype=small, device=slates.device)
    table.scatter_(1, safe, slot)
    has_dup = (table.gather(1, safe) != slot).any(dim=1)  # (B,)
    flags = torch.stack([out_of_range, has_dup.any() & ~out_of_range,
                         ~torch.isfinite(logp).all(), (logp > 1e-4).any()]).tolist()
    if not any(flags):
        return slates, logp
    if flags[0]:
        row = int(((slates < 0) | (slates >= c)).any(dim=1).nonzero()[0])
        raise PolicyOutputError(
            f"slates must be positions in [0, {c}) into the candidates; row {row} is "
            f"{slates[row].tolist()}")
    if flags[1]:
        row = int(has_dup.nonzero()[0])
        raise PolicyOutputError(
            f"slates must not repeat a candidate; row {row} is {slates[row].tolist()} (sample "
            "without replacement, e.g. Gumbel-top-k)")
    row = int((~torch.isfinite(logp) | (logp > 1e-4)).nonzero()[0])
    raise PolicyOutputError(
        f"log_propensity must be finite and <= 0 (a log-probability); row {row} is "
        f"{float(logp[row])}")


def _index_dtype(numel: int) -> torch.dtype:
    """int32 for index arithmetic when it fits (int64 products are slow on CPUs without AVX-512)."""
    return torch.int32 if numel < 2**31 else torch.long


def apply_feedback(world: World, users: torch.Tensor, items: torch.Tensor, clicks: torch.Tensor,
                   gen: torch.Generator) -> None:
    """Write the effects of served slates into the state: history, popularity, reinforcement,
    fatigue, satisfaction. users (B,) must be distinct; items, clicks (B, K)."""
    cfg, st, it = world.cfg, world.users, world.items
    dyn = cfg.dynamics
    one_click = choice.at_most_one_click(cfg.choice)
    recsim = dyn.reinforcement.enabled and dyn.reinforcement.rule == "recsim"
    if one_click or recsim:  # the first clicked position of each slate
        top, first = clicks.max(dim=1)  # (B,), (B,) first position holding the maximum
        has_click = top > 0
        first_item = items.gather(1, first.unsqueeze(1)).squeeze(1)  # (B,)
    if cfg.history_len > 0:
        old = take_rows(st.history, users)  # (B, H)
        if one_click:
            new = dynamics.push_one(old, first_item, has_click)
        else:
            new = dynamics.push_history(old, items, clicks)
        st.history.index_copy_(0, users, new)
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
    world.retrieval_cache = None


def serve_batch(world: World, requests: Requests, policy: Policy, gen: torch.Generator) -> DayLog:
    """Serve one batch: policy -> checks -> true probabilities -> clicks -> state updates."""
    slates, logp = check_policy_output(policy(requests), requests, world.cfg.slate_size)
    items = requests.candidates.gather(1, slates)  # (B, K)
    probs = click_probs(world, requests.users, items)  # (B, K) before the state changes
    clicks = choice.sample_clicks(world.cfg.choice, probs, gen)
    apply_feedback(world, requests.users, items, clicks, gen)
    b = len(requests)
    return DayLog(
        day=torch.full((b,), requests.day, dtype=torch.long, device=world.device),
        request_id=requests.request_id, users=requests.users, cohort=requests.cohort,
        history=requests.history, candidates=requests.candidates, slates=slates, items=items,
        clicks=clicks, log_propensity=logp.float(), true_probs=probs, item_topic=requests.item_topic,
    )


def simulate_day(world: World, policy: Policy, gen: torch.Generator, batch_size: int = 8192,
                 on_batch: Callable[[DayLog], None] | None = None) -> DayLog:
    """Simulate one day of requests served by ``policy``; mutates ``world``; returns the day's log."""
    check_generator(gen, world.device)
    if batch_size <= 0:
        raise ValueError(f"batch_size = {batch_size}: must be a positive number of requests")
    g_requests, g_retrieval, g_response, g_dynamics = (child_generator(gen) for _ in range(4))
    index = build_index(world, g_retrieval)
    world.retrieval_cache = index
    day_users = sample_day_users(world, g_requests)  # (R,)
    n_requests = day_users.shape[0]
    if n_requests == 0:
        end_of_day(world, day_users, g_dynamics)
        return DayLog.empty(world.items.topic, world.cfg.candidates.n_candidates,
                            world.cfg.slate_size, world.cfg.history_len)
    # Candidates go straight into one day-sized buffer (the largest part of the log: no copy).
    candidates = torch.empty(n_requests, world.cfg.candidates.n_candidates, dtype=torch.long,
                             device=world.device)  # (R, C)
    logs = []
    for start in range(0, n_requests, batch_size):
        users = day_users[start:start + batch_size]
        stop = start + users.shape[0]
        ids = torch.arange(start, stop, device=world.device)
        requests = make_requests(world, users, g_retrieval, ids, index, candidates[start:stop])
        log = serve_batch(world, requests, policy, g_response)
        if on_batch is not None:
            on_batch(log)
        logs.append(log)
    end_of_day(world, day_users, g_dynamics)
    if len(logs) == 1:
        return logs[0]
    day_log = DayLog.cat([dataclasses.replace(g, candidates=g.candidates[:0]) for g in logs])
    return dataclasses.replace(day_log, candidates=candidates)


def respond(world: World, users: torch.Tensor, slate_items: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    """Clicks (B, K) for any slates of item ids (B, K), without changing the state."""
    return choice.sample_clicks(world.cfg.choice, click_probs(world, users, slate_items), gen)

