"""Dynamics: each pure function against hand-computed values; each switch acts on a day."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import dynamics, presets
from simulators.config import RetentionConfig
from simulators.day import simulate_day
from simulators.policies import oracle_policy, uniform_random_policy
from simulators.rng import make_generator
from simulators.world import make_world


def test_push_history_by_hand():
    hist = torch.tensor([[7, 8, 9, -1], [5, -1, -1, -1]])
    items = torch.tensor([[1, 2, 3], [4, 6, 0]])
    clicks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    got = dynamics.push_history(hist, items, clicks)
    # lower positions are later clicks: 3 then 1, then the old history
    assert got.tolist() == [[3, 1, 7, 8], [5, -1, -1, -1]]


def test_push_history_with_more_clicks_than_history():
    hist = torch.tensor([[7, 8]])
    got = dynamics.push_history(hist, torch.tensor([[1, 2, 3]]), torch.ones(1, 3))
    assert got.tolist() == [[3, 2]]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_push_one_equals_push_history_for_single_clicks(h, k, seed):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(-1, 50, (8, h), generator=g)
    items = torch.randint(0, 50, (8, k), generator=g)
    pos = torch.randint(0, k + 1, (8,), generator=g)  # k = no click
    clicks = (torch.arange(k) == pos.unsqueeze(1)).float()
    has = pos < k
    first = items.gather(1, pos.clamp(max=k - 1).unsqueeze(1)).squeeze(1)
    assert torch.equal(dynamics.push_one(hist, first, has),
                       dynamics.push_history(hist, items, clicks))


def test_reinforce_toward_single_mode_by_hand():
    z = torch.tensor([[[0.0, 0.0]]])  # (B=1, M=1, D=2)
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, K=2, 2)
    w = torch.ones(1, 1)
    one = dynamics.reinforce_toward(z, w, e, torch.tensor([[1.0, 0.0]]), rate=0.1, tau=4.0)
    assert torch.allclose(one, torch.tensor([[[0.1, 0.0]]]))
    # two clicks: step min(0.1 * 2, 1) toward their mean
    two = dynamics.reinforce_toward(z, w, e, torch.tensor([[1.0, 1.0]]), rate=0.1, tau=4.0)
    assert torch.allclose(two, torch.tensor([[[0.1, 0.1]]]))
    none = dynamics.reinforce_toward(z, w, e, torch.zeros(1, 2), rate=0.1, tau=4.0)
    assert torch.equal(none, z)


def test_reinforce_toward_moves_the_responsible_mode():
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two modes
    e = torch.tensor([[[2.0, 0.0]]])  # an item along mode 0
    new = dynamics.reinforce_toward(z, torch.full((1, 2), 0.5), e, torch.ones(1, 1), 0.5, 10.0)
    moved = (new - z).norm(dim=2)[0]
    assert moved[0] > 0.4 and moved[1] < 1e-3


def test_recsim_interest_step_by_hand():
    # RecSim: alpha = 0.3 * (1 - |x|); step = alpha * (1 - x); + if u < (x + 1) / 2
    x = torch.tensor([0.5, 0.5, -0.5, 1.0])
    u = torch.tensor([0.1, 0.9, 0.1, 0.0])
    got = dynamics.recsim_interest_step(x, u, 0.3)
    step = 0.3 * 0.5 * 0.5
    want = torch.tensor([0.5 + step, 0.5 - step, -0.5 + 0.3 * 0.5 * 1.5, 1.0])
    assert torch.allclose(got, want)


def test_add_exposure_counts_topics():
    f = dynamics.add_exposure(torch.zeros(2, 4), torch.tensor([[0, 0, 3], [1, 2, 2]]))
    assert f.tolist() == [[2, 0, 0, 1], [0, 1, 2, 0]]


def test_satisfaction_by_hand():
    s = dynamics.request_satisfaction(torch.tensor([[1.0, 0.0, 1.0]]),
                                      torch.tensor([[0.4, 9.0, -0.2]]), 0.5)
    assert torch.allclose(s, torch.tensor([2.0 + 0.5 * 0.2]))
    assert torch.allclose(dynamics.update_satisfaction(torch.tensor([1.0]), s, 0.3),
                          torch.tensor([0.7 + 0.3 * 2.1]))


def test_drift_without_noise_closes_the_pull_share_of_the_gap():
    z, c = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    got = dynamics.drift(z, c, pull=0.25, noise=0.0, gen=make_generator(0))
    assert torch.allclose(got, torch.full((3, 2, 4), 0.25))


def test_drift_noise_has_the_configured_std():
    """With no pull the step is pure noise: N(0, noise^2) per coordinate."""
    z = torch.zeros(20_000, 2, 4)
    step = dynamics.drift(z, torch.ones_like(z), pull=0.0, noise=0.07, gen=make_generator(3))
    assert abs(step.std().item() - 0.07) < 0.002 and abs(step.mean().item()) < 0.002


def test_churn_extremes():
    active = torch.tensor([True, True, False, False])
    requested = torch.tensor([True, False, False, False])
    sat = torch.zeros(4)
    leave_all = RetentionConfig(enabled=True, churn_max=1.0, return_rate=0.0)
    assert dynamics.churn(active, sat, requested, leave_all, make_generator(0)).tolist() == \
        [False, True, False, False]
    back_all = RetentionConfig(enabled=True, churn_max=0.0, return_rate=1.0)
    assert dynamics.churn(active, sat, requested, back_all, make_generator(0)).tolist() == \
        [True, True, True, True]


# ---- each switch acts on a simulated day (and does nothing when off)

def run_day(dyn, policy="random", seed=0, **over):
    w = make_world(presets.tiny({"dynamics": dyn, **over}), make_generator(seed))
    before = w.clone()
    pol = oracle_policy(w) if policy == "oracle" else uniform_random_policy(5, make_generator(1))
    log = simulate_day(w, pol, make_generator(seed + 1))
    return before, w, log


def test_all_switches_off_leave_interests_alone():
    before, after, _ = run_day({})
    assert torch.equal(before.users.interests, after.users.interests)
    assert bool(after.users.active.all()) and after.users.fatigue is None


def test_drift_moves_interests_daily():
    before, after, _ = run_day({"drift": {"enabled": True, "pull": 0.5, "noise": 0.0}})
    centres = before.cohort_centres[before.users.cohort]
    want = before.users.interests + 0.5 * (centres - before.users.interests)
    assert torch.allclose(after.users.interests, want, atol=1e-6)


def test_reinforcement_pulls_clickers_toward_what_they_clicked():
    before, after, log = run_day({"reinforcement": {"enabled": True, "rate": 0.2}})
    moved = (after.users.interests - before.users.interests).norm(dim=(1, 2))  # (U,)
    clickers = log.users[log.clicks.sum(1) > 0]
    others = torch.ones(after.n_users, dtype=torch.bool)
    others[log.users] = False
    assert bool((moved[clickers] > 0).all()) and bool((moved[others] == 0).all())
    # the clicked items are now closer to the clicker's best mode
    rows = (log.clicks.sum(1) > 0).nonzero().squeeze(1)
    u = log.users[rows]
    e = before.items.emb[log.items[rows, log.clicks[rows].argmax(1)]]  # (R, D)
    d_before = (before.users.interests[u] - e.unsqueeze(1)).norm(dim=2).amin(1)
    d_after = (after.users.interests[u] - e.unsqueeze(1)).norm(dim=2).amin(1)
    assert bool((d_after < d_before).float().mean() > 0.9)


def test_fatigue_counts_exposure_and_decays():
    _, after, log = run_day({"fatigue": {"enabled": True, "decay": 0.5}})
    expected = torch.zeros(after.n_users, after.n_topics)
    topics = after.items.topic[log.items]  # (R, K)
    expected.index_put_((log.users.unsqueeze(1).expand_as(topics), topics),
                        torch.ones_like(topics, dtype=torch.float), accumulate=True)
    assert torch.allclose(after.users.fatigue, 0.5 * expected)


def test_retention_unhappy_users_leave_more_than_happy_ones():
    strict = {"retention": {"enabled": True, "churn_max": 0.9, "satisfaction_scale": 0.5}}
    _, random_w, _ = run_day(strict, "random", users={"activity_mean": 1.0, "n_users": 600})
    _, oracle_w, _ = run_day(strict, "oracle", users={"activity_mean": 1.0, "n_users": 600})
    assert random_w.users.active.float().mean() < oracle_w.users.active.float().mean()
    assert random_w.users.active.float().mean() < 0.95


def test_users_who_left_make_no_requests():
    w = make_world(presets.tiny({"users": {"activity_mean": 1.0, "activity_spread": 0.0,
                                           "cohort_activity_spread": 0.0}}), make_generator(0))
    w.users.active[::2] = False  # every other user has left
    log = simulate_day(w, uniform_random_policy(5, make_generator(1)), make_generator(2))
    assert len(log) == w.n_users // 2 and bool((log.users % 2 == 1).all())


def test_recsim_rule_updates_only_the_clicked_topic():
    cfg = presets.recsim_equivalent({"users": {"n_users": 300}, "items": {"n_items": 500}})
    w = make_world(cfg, make_generator(0))
    before = w.users.interests.clone()
    log = simulate_day(w, uniform_random_policy(10, make_generator(1)), make_generator(2))
    diff = (w.users.interests - before)[:, 0]  # (U, T)
    changed = (diff != 0).sum(1)
    assert int(changed.max()) <= 1
    clicked = log.clicks.sum(1) > 0
    assert int(changed[log.users[~clicked]].sum()) == 0
    rows = clicked.nonzero().squeeze(1)
    topic = w.items.topic[log.items[rows, log.clicks[rows].argmax(1)]]
    moved = diff[log.users[rows]].abs().argmax(1)
    ok = (changed[log.users[rows]] == 0) | (moved == topic)  # a step can be 0 at |x| = 1
    assert bool(ok.all())
    assert (changed[log.users[rows]] == 1).float().mean() > 0.9  # and the rule did act
