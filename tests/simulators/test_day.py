"""The day driver: invariants of a simulated day, streaming batches, determinism, clear errors
for bad policy output, clicks that match the true probabilities."""
import math
import threading

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import presets
from simulators.day import PolicyOutputError, respond, simulate_day
from simulators.ground_truth import click_probs
from simulators.logs import day_log_to_frame
from simulators.policies import fixed_positions_policy, oracle_policy, uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world


def tiny(seed=0, **over):
    return make_world(presets.tiny(over or None), make_generator(seed))


def test_a_day_keeps_its_invariants():
    w = tiny(users={"activity_mean": 0.6})
    before = w.clone()
    log = simulate_day(w, uniform_random_policy(5, make_generator(1)), make_generator(2),
                       batch_size=32)
    R, C, K = len(log), 20, 5
    assert 0 < R <= w.n_users and torch.equal(log.request_id, torch.arange(R))
    assert log.users.unique().numel() == R and bool((log.day == 0).all())
    assert torch.equal(log.cohort, w.users.cohort[log.users])
    assert log.candidates.shape == (R, C) and log.slates.shape == (R, K)
    assert bool((log.candidates.sort(1).values.diff(dim=1) > 0).all())
    assert torch.equal(log.items, log.candidates.gather(1, log.slates))
    assert torch.equal(log.candidate_topics, w.items.topic[log.candidates])
    assert bool(((log.true_probs >= 0) & (log.true_probs <= 1)).all())
    assert torch.allclose(log.log_propensity, torch.full((R,), -math.log(20 * 19 * 18 * 17 * 16)))
    # the day advanced, new items arrived, popularity = decayed click counts
    assert w.day == 1 and w.n_items == before.n_items + 10
    counts = torch.zeros(w.n_items).index_add_(0, log.items.reshape(-1), log.clicks.reshape(-1))
    assert torch.allclose(w.items.popularity, w.cfg.items.popularity_decay * counts)
    # histories: the slate's clicks, latest (lowest) first, then the old history
    for r in range(R):
        clicked = log.items[r][log.clicks[r] > 0].flip(0).tolist()
        assert w.users.history[log.users[r]].tolist()[:len(clicked)] == clicked[:5]


def test_true_probs_are_the_ground_truth_before_the_update():
    """With fatigue and reinforcement on, serving a slate changes the user's click
    probabilities; the logged ones are those the user had when served (each user requests once
    a day, so that is the state at the start of the day)."""
    w = tiny(dynamics={"fatigue": {"enabled": True}, "reinforcement": {"enabled": True}})
    snapshot = w.clone()
    log = simulate_day(w, uniform_random_policy(5, make_generator(1)), make_generator(2),
                       batch_size=16)
    assert torch.allclose(log.true_probs, click_probs(snapshot, log.users, log.items))
    w.day = snapshot.day  # the same items, the users' state after serving
    after = click_probs(w, log.users, log.items)
    assert (after - log.true_probs).abs().max() > 1e-3  # serving changed them: the check bites


def test_batches_stream_through_on_batch():
    w = tiny(users={"activity_mean": 1.0, "activity_spread": 0.0,
                    "cohort_activity_spread": 0.0})
    seen, calls = [], []

    def policy(req):
        calls.append(len(req))
        return fixed_positions_policy(5)(req)

    log = simulate_day(w, policy, make_generator(0), batch_size=64, on_batch=seen.append)
    assert calls == [64, 64, 64, 8] and [len(b) for b in seen] == calls
    assert torch.equal(torch.cat([b.items for b in seen]), log.items)
    assert torch.equal(torch.cat([b.candidates for b in seen]), log.candidates)


def frame_of_day(seed, model):
    w = tiny(seed, choice={"model": model}, dynamics={
        "drift": {"enabled": True}, "reinforcement": {"enabled": True},
        "fatigue": {"enabled": True}, "retention": {"enabled": True}})
    gen = make_generator(seed)
    pol = uniform_random_policy(5, make_generator(seed + 100))
    frames = [day_log_to_frame(simulate_day(w, pol, gen, batch_size=50)) for _ in range(2)]
    return pl.concat(frames), w


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["pbm", "cascade", "mnl"]))
def test_same_seed_identical_frames_different_seed_different(seed, model):
    a, wa = frame_of_day(seed, model)
    b, wb = frame_of_day(seed, model)
    c, _ = frame_of_day(seed + 1, model)
    assert a.equals(b) and torch.equal(wa.users.interests, wb.users.interests)
    assert not a.equals(c)
    if model != "pbm":  # cascade and MNL: at most one click per slate
        assert int(a.group_by(["day", "request"]).agg(pl.col("click").sum())["click"].max()) <= 1


@pytest.mark.parametrize("model", ["pbm", "cascade", "mnl"])
def test_clicks_match_true_probabilities_over_a_day(model):
    """Total clicks within 5 standard deviations of the sum of true probabilities (fixed seed)."""
    w = tiny(users={"n_users": 3000, "activity_mean": 1.0}, choice={"model": model})
    log = simulate_day(w, uniform_random_policy(5, make_generator(1)), make_generator(2))
    p = log.true_probs.double()
    if model == "pbm":
        var = (p * (1 - p)).sum()
    else:
        s = p.sum(1)
        var = (s * (1 - s)).sum()
    assert abs(float(log.clicks.sum() - p.sum())) <= 5 * math.sqrt(float(var))


def test_respond_does_not_touch_the_state():
    w = tiny()
    before = w.clone()
    users = torch.arange(10)
    items = torch.randint(0, 300, (10, 5), generator=torch.Generator().manual_seed(0))
    clicks = respond(w, users, items, make_generator(1))
    assert clicks.shape == (10, 5) and bool(((clicks == 0) | (clicks == 1)).all())
    assert torch.equal(w.users.history, before.users.history)
    assert torch.equal(w.items.popularity, before.items.popularity) and w.day == 0


def test_a_day_without_requests():
    w = tiny(users={"activity_mean": 1e-9, "activity_spread": 0.0,
                    "cohort_activity_spread": 0.0})
    log = simulate_day(w, fixed_positions_policy(5), make_generator(0))
    assert len(log) == 0 and log.candidates.shape == (0, 20) and log.clicks.shape == (0, 5)
    assert w.day == 1 and day_log_to_frame(log).height == 0


def fixed(slates, logp):
    def policy(req):
        b = len(req)
        return slates(b), logp(b)
    return policy


K = 5
ok_slates = lambda b: torch.arange(K).expand(b, K)
ok_logp = lambda b: torch.zeros(b)


@pytest.mark.parametrize("policy, needle", [
    (fixed(lambda b: torch.arange(K + 1).expand(b, K + 1), ok_logp), "shape"),
    (fixed(lambda b: torch.arange(K).expand(b + 1, K), ok_logp), "shape"),
    (fixed(lambda b: torch.zeros(b, K, dtype=torch.long), ok_logp), "must not repeat"),
    (fixed(lambda b: torch.arange(K).expand(b, K) + 16, ok_logp), r"positions in \[0, 20\)"),
    (fixed(lambda b: -torch.arange(K).expand(b, K), ok_logp), r"positions in \[0, 20\)"),
    (fixed(lambda b: torch.arange(K).expand(b, K).float(), ok_logp), "dtype"),
    (fixed(ok_slates, lambda b: torch.full((b,), float("nan"))), "finite"),
    (fixed(ok_slates, lambda b: torch.ones(b)), "<= 0"),
    (fixed(ok_slates, lambda b: torch.zeros(b, 1)), "log_propensity has shape"),
    (lambda req: ok_slates(len(req)), "tuple"),
])
def test_bad_policy_output_is_a_clear_error(policy, needle):
    w = tiny()
    with pytest.raises(PolicyOutputError, match=needle):
        simulate_day(w, policy, make_generator(0))


def test_duplicate_in_one_row_only_is_caught():
    def policy(req):
        s = torch.arange(K).repeat(len(req), 1)
        s[3, 4] = s[3, 0]
        return s, torch.zeros(len(req))

    with pytest.raises(PolicyOutputError, match="row 3"):
        simulate_day(tiny(users={"activity_mean": 1.0}), policy, make_generator(0))


def test_bad_arguments():
    w = tiny()
    with pytest.raises(ValueError, match="batch_size"):
        simulate_day(w, fixed_positions_policy(5), make_generator(0), batch_size=0)
    with pytest.raises(TypeError, match="torch.Generator"):
        simulate_day(w, fixed_positions_policy(5), 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_unchanged_on_cuda():
    w = make_world(presets.tiny({"device": "cuda", "dynamics": {
        "reinforcement": {"enabled": True}, "fatigue": {"enabled": True}}}),
        make_generator(0, "cuda"))
    log = simulate_day(w, uniform_random_policy(5, make_generator(1, "cuda")),
                       make_generator(2, "cuda"))
    assert log.items.is_cuda and w.day == 1 and day_log_to_frame(log).height == len(log) * 5


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["pbm", "cascade", "mnl"]),
       st.integers(2, 30), st.integers(1, 8), st.booleans(), st.integers(1, 300))
def test_served_slates_never_repeat_an_item(seed, model, c, k, oracle, batch):
    k = min(k, c)
    cfg = presets.tiny({"choice": {"model": model}, "candidates": {"n_candidates": c},
                        "slate_size": k, "users": {"activity_mean": 0.8}})
    w = make_world(cfg, make_generator(seed))
    pol = oracle_policy(w) if oracle else uniform_random_policy(k, make_generator(seed + 1))
    log = simulate_day(w, pol, make_generator(seed + 2), batch_size=batch)
    assert bool((log.items.sort(1).values.diff(dim=1) > 0).all())
    assert bool(torch.isfinite(log.true_probs).all())
    assert bool(((log.true_probs >= 0) & (log.true_probs <= 1)).all())


def world_for(case, seed):
    if case == "recsim":
        return make_world(presets.recsim_equivalent({
            "users": {"n_users": 300}, "items": {"n_items": 500},
            "candidates": {"n_candidates": 20}, "slate_size": 5}), make_generator(seed))
    return tiny(seed, choice={"model": case}, users={"activity_mean": 0.8}, dynamics={
        "drift": {"enabled": True}, "reinforcement": {"enabled": True},
        "fatigue": {"enabled": True}, "retention": {"enabled": True}})


@pytest.mark.parametrize("case", ["mnl", "pbm", "cascade", "recsim"])
def test_prefetch_gives_bit_identical_days(case, one_thread):
    """Requests prepared ahead in a second thread: same logs, same state, streaming included."""
    runs = []
    for prefetch in (False, True):
        w = world_for(case, 3)
        gen, pol = make_generator(4), uniform_random_policy(5, make_generator(5))
        streamed = []
        logs = [simulate_day(w, pol, gen, batch_size=23, on_batch=streamed.append,
                             prefetch=prefetch) for _ in range(3)]
        runs.append((pl.concat([day_log_to_frame(g) for g in logs]),
                     torch.cat([b.candidates for b in streamed]), w))
    (fa, ca, wa), (fb, cb, wb) = runs
    assert fa.equals(fb) and torch.equal(ca, cb)
    for name in ("interests", "history", "active", "fatigue", "satisfaction"):
        a, b = getattr(wa.users, name), getattr(wb.users, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    assert torch.equal(wa.items.popularity, wb.items.popularity)


def test_kept_logs_are_never_overwritten_by_later_days():
    """Day buffers are reused only once nothing references them (simulators.buffers)."""
    w = tiny(users={"activity_mean": 1.0, "activity_spread": 0.0, "cohort_activity_spread": 0.0})
    gen, pol = make_generator(0), uniform_random_policy(5, make_generator(1))
    kept = simulate_day(w, pol, gen, batch_size=64)
    batch_views = []
    simulate_day(w, pol, gen, batch_size=64, on_batch=batch_views.append)
    copies = (kept.candidates.clone(), kept.clicks.clone(),
              torch.cat([b.items for b in batch_views]).clone())
    for _ in range(4):  # dropped logs: their memory is reused by later days
        simulate_day(w, pol, gen, batch_size=64)
    assert torch.equal(kept.candidates, copies[0]) and torch.equal(kept.clicks, copies[1])
    assert torch.equal(torch.cat([b.items for b in batch_views]), copies[2])


def test_an_error_in_the_policy_stops_the_prefetch_thread():
    calls = []

    def policy(req):
        calls.append(len(req))
        if len(calls) == 2:
            raise RuntimeError("policy failed")
        return fixed_positions_policy(5)(req)

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="policy failed"):
        simulate_day(tiny(users={"activity_mean": 1.0}), policy, make_generator(0),
                     batch_size=16, prefetch=True)
    assert threading.active_count() == before


def test_broadcast_slates_are_checked_once_and_served():
    w = tiny(users={"activity_mean": 1.0})
    dup = fixed(lambda b: torch.tensor([0, 1, 2, 1, 4]).expand(b, K), ok_logp)
    with pytest.raises(PolicyOutputError, match=r"row 0 is \[0, 1, 2, 1, 4\]"):
        simulate_day(w, dup, make_generator(0))
    log = simulate_day(w, fixed_positions_policy(K), make_generator(0))  # expand()-ed slates
    assert torch.equal(log.slates, torch.arange(K).expand(len(log), K))


@pytest.mark.parametrize("case", ["mnl", "cascade", "recsim"])
def test_feedback_shortcuts_change_nothing(case):
    """apply_feedback given the sampled click positions (the serving path) writes the same state
    as from the clicks alone."""
    from simulators.day import apply_feedback

    worlds = [world_for(case, 7), world_for(case, 7)]
    users = torch.randperm(worlds[0].n_users, generator=torch.Generator().manual_seed(0))[:40]
    items = torch.randint(0, worlds[0].n_items, (40, 5), generator=torch.Generator().manual_seed(1))
    chosen = torch.randint(0, 6, (40, 1), generator=torch.Generator().manual_seed(2))  # 5: none
    clicks = (torch.arange(5) == chosen).float()
    apply_feedback(worlds[0], users, items, clicks, make_generator(3))
    apply_feedback(worlds[1], users, items, clicks, make_generator(3), chosen=chosen)
    a, b = worlds
    for name in ("interests", "history", "fatigue", "satisfaction"):
        x, y = getattr(a.users, name), getattr(b.users, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert torch.equal(a.items.popularity, b.items.popularity)
    assert float(a.items.popularity.sum()) == float((chosen < 5).sum())
