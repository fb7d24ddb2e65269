"""Every probe on a hand-built case whose answer is known, plus a daily-loop run with them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys_onpolicy.metrics import auc
from recsys_onpolicy.model import ModelConfig, build_scorer
from recsys_onpolicy.probes import (
    DailyProbes,
    ProbeConfig,
    ProbeSet,
    cohort_holdout_auc,
    feedback_metrics,
    first_position_kl,
    forgetting_rows,
    gain_drop,
    make_probe_set,
    mean_interest,
    measure_drift,
    measure_gain_drop,
    measure_kl,
    measure_target,
    parameter_drift,
    probe_labels,
    rows_touched_by_cohort,
    served_expected_clicks,
    slate_kl,
    soft_label_auc,
    user_rows,
)
from recsys_onpolicy.probes.daily import measure_auc
from recsys_onpolicy.probes.feedback import served_and_oracle_clicks
from recsys_onpolicy.probes.probe_set import score_probes
from recsys_onpolicy.results import metric_rows, to_frame
from recsys_onpolicy.slate_policy import slate_log_prob
from simulators import ground_truth
from simulators.day import DayLog, make_requests, respond
from simulators.presets import tiny
from simulators.rng import make_generator
from simulators.world import World, append_items, make_world


def tiny_world(seed: int = 0, **choice) -> World:
    cfg = tiny({"choice": choice} if choice else None)
    return make_world(cfg, make_generator(seed))


class TruthScorer:
    """A 'model' whose scores are the world's true attraction logits."""

    def __init__(self, world: World) -> None:
        self.world = world

    def score_requests(self, requests) -> torch.Tensor:
        return ground_truth.attraction_logits(self.world, requests.users, requests.candidates)


class FixedScorer:
    """A 'model' returning given scores (B, C) whatever the requests."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.scores = scores

    def score_requests(self, requests) -> torch.Tensor:
        return self.scores[: len(requests)]


# ---------------------------------------------------------------- probe set


def test_probe_set_is_fixed_per_cohort_and_leaves_the_world_alone():
    world = tiny_world()
    interests = world.users.interests.clone()
    a = make_probe_set(world, 30, make_generator(5))
    b = make_probe_set(world, 30, make_generator(5))
    for name in ("users", "cohort", "candidates", "slates"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert (a.label_seed, a.sample_seed) == (b.label_seed, b.sample_seed)
    assert len(a) == 60 and a.users.unique().numel() == 60  # 30 distinct users per cohort
    assert torch.equal(world.users.cohort[a.users], a.cohort)
    assert torch.equal(a.cohort, torch.tensor([0] * 30 + [1] * 30))
    k, c = world.cfg.slate_size, world.cfg.candidates.n_candidates
    assert a.slates.shape == (60, k) and a.candidates.shape == (60, c)
    assert all(row.unique().numel() == k for row in a.slates)  # distinct positions
    assert torch.equal(world.users.interests, interests)
    # capped at the cohort size (100 users per cohort in the tiny world)
    assert len(make_probe_set(world, 10_000, make_generator(5))) == world.n_users
    # round trip through plain tensors (checkpoints)
    c2 = ProbeSet.from_state(a.state_dict(), "cpu")
    assert torch.equal(c2.candidates, a.candidates) and c2.label_seed == a.label_seed


def test_probe_requests_read_todays_history():
    world = tiny_world()
    probe = make_probe_set(world, 5, make_generator(1))
    world.users.history[probe.users[0], 0] = 7
    req = probe.requests(world)
    assert int(req.history[0, 0]) == 7 and torch.equal(req.candidates, probe.candidates)
    assert torch.equal(req.candidate_topics, world.items.topic[probe.candidates])


# ---------------------------------------------------------------- AUC


def test_soft_label_auc_by_hand_and_equal_to_auc_on_hard_labels():
    # positives: item0 w 0.5, item1 w 1; negatives: item0 w 0.5. Pairs: (item0+, item0-) tie
    # 0.5*0.5*1/2 = 0.125, (item1+, item0-) 1*0.5 = 0.5; total weight 1.5*0.5 -> 0.625/0.75
    assert soft_label_auc([1.0, 2.0], [0.5, 1.0]) == pytest.approx(0.625 / 0.75)
    s, y = torch.randn(40, generator=make_generator(0)), torch.tensor([0.0, 1.0] * 20)
    assert soft_label_auc(s, y) == pytest.approx(auc(s, y))
    assert math.isnan(soft_label_auc([1.0, 2.0], [0.0, 0.0]))
    with pytest.raises(ValueError, match="probabilities"):
        soft_label_auc([1.0], [1.5])


def test_true_scores_reach_the_oracle_auc_without_position_effects():
    # position_decay 0: the true click probability of an impression is a monotone function of
    # the item's attraction logit, so a scorer returning those logits ranks like the oracle.
    world = tiny_world(position_decay=0.0)
    probe = make_probe_set(world, 100, make_generator(3))
    scores = TruthScorer(world).score_requests(probe.requests(world))  # (P, C)
    for noise_free in (False, True):
        result = cohort_holdout_auc(world, probe, scores, noise_free)
        assert set(result) == {0, 1}
        for model_auc, oracle_auc in result.values():
            assert model_auc == pytest.approx(oracle_auc, abs=1e-12)
            assert 0.5 < oracle_auc <= 1.0
    flat = cohort_holdout_auc(world, probe, torch.zeros_like(scores))
    assert all(a == pytest.approx(0.5) for a, _ in flat.values())  # constant score: all ties


def test_labels_use_fixed_noise_and_follow_the_world():
    world = tiny_world()
    probe = make_probe_set(world, 50, make_generator(3))
    probs, clicks = probe_labels(world, probe)
    _, again = probe_labels(world, probe)
    assert torch.equal(clicks, again)  # common random numbers across days
    expected = respond(world, probe.users, probe.items, make_generator(probe.label_seed))
    assert torch.equal(clicks, expected.float())
    assert torch.allclose(probs, ground_truth.click_probs(world, probe.users, probe.items))
    world.users.interests *= 0.0  # the world changed: labels re-evaluated on today's state
    probs2, _ = probe_labels(world, probe)
    assert not torch.allclose(probs, probs2)


def test_auc_scores_shape_is_checked():
    world = tiny_world()
    probe = make_probe_set(world, 5, make_generator(3))
    with pytest.raises(ValueError, match=r"\(P, C\)"):
        cohort_holdout_auc(world, probe, torch.zeros(3, 3))


# ---------------------------------------------------------------- forgetting


def auc_rows(regime: str, seed: int, values: list[float], group: str = "c1",
             experiment: str = "removal") -> list[dict]:
    return [r for step, v in enumerate(values) for r in metric_rows(
        domain="recsys", experiment=experiment, regime=regime, seed=seed, step=step,
        values={"probe/auc": v}, group=group)]


def test_forgetting_arithmetic_on_a_hand_made_frame():
    run = to_frame(auc_rows("grpo", 0, [0.80, 0.78, 0.70, 0.65])
                   + auc_rows("grpo", 0, [0.9, 0.5, 0.5, 0.5], group="c0")  # not removed
                   + auc_rows("grpo", 1, [0.70, 0.71, 0.69, 0.60]))
    control = to_frame(auc_rows("grpo", 0, [0.80, 0.79, 0.77, 0.76], experiment="control")
                       + auc_rows("grpo", 1, [0.70, 0.70, 0.70, 0.70], experiment="control"))
    out = forgetting_rows(run, removal_day=1, cohorts=[1], control=control)
    assert set(out["group"]) == {"c1"} and out["step"].min() == 1

    def values(metric, seed):
        part = out.filter((pl.col("metric") == metric) & (pl.col("seed") == seed)).sort("step")
        return part["value"].to_list()

    assert values("probe/forgetting", 0) == pytest.approx([0.0, 0.08, 0.13])
    assert values("probe/forgetting", 1) == pytest.approx([0.0, 0.02, 0.11])
    # control forgetting: seed 0 [0, 0.02, 0.03], seed 1 [0, 0, 0]
    assert values("probe/forgetting_vs_control", 0) == pytest.approx([0.0, 0.06, 0.10])
    assert values("probe/forgetting_vs_control", 1) == pytest.approx([0.0, 0.02, 0.11])
    assert out["experiment"].unique().to_list() == ["removal"]
    alone = forgetting_rows(run, removal_day=1, cohorts=[1])
    assert set(alone["metric"]) == {"probe/forgetting"} and alone.height == 6
    assert forgetting_rows(run, removal_day=9, cohorts=[1]).height == 0  # no AUC at step D


def test_forgetting_rejects_ambiguous_controls():
    run = to_frame(auc_rows("grpo", 0, [0.8, 0.7]))
    control = to_frame(auc_rows("grpo", 0, [0.8, 0.7], experiment="a")
                       + auc_rows("grpo", 0, [0.8, 0.7], experiment="b"))
    with pytest.raises(ValueError, match="several runs"):
        forgetting_rows(run, 0, [1], control)


# ---------------------------------------------------------------- target, gain and drop


def test_gain_and_drop_by_hand():
    got = gain_drop({"train": 1.25, "heldout": 0.75}, {"train": 1.0, "heldout": 0.875})
    assert got == pytest.approx({"target/gain": 0.25, "probe/drop": 0.125})
    assert gain_drop({"train": 2.0}, {"train": 1.5}) == pytest.approx({"target/gain": 0.5})
    target = [("target/expected_clicks", "train", 1.5), ("target/expected_clicks", "heldout", 1.0)]
    assert measure_gain_drop(target, {"train": 1.0, "heldout": 1.25}) == [
        ("target/gain", None, 0.5), ("probe/drop", None, 0.25)]


def test_served_expected_clicks_on_a_set_fixed_policy():
    # Cascade: the chance of a click depends only on the set of shown items, 1 - prod(1 - a_i).
    # Scores mask all but K candidates, so every sampled slate shows the same set.
    world = tiny_world(model="cascade")
    req = make_requests(world, torch.arange(6), make_generator(2))
    k, c = world.cfg.slate_size, world.cfg.candidates.n_candidates
    scores = torch.full((6, c), float("-inf"))
    scores[:, 3:3 + k] = torch.randn(6, k, generator=make_generator(0))
    got = served_expected_clicks(world, req.users, req.candidates, scores, 1.0, 3,
                                 make_generator(1))
    a = ground_truth.item_attraction(world, req.users, req.candidates[:, 3:3 + k])  # (6, K)
    assert torch.allclose(got, 1 - (1 - a).prod(dim=1), atol=1e-6)


def test_served_expected_clicks_of_a_near_greedy_true_policy_is_the_oracle():
    world = tiny_world()  # PBM: order matters; at temperature -> 0 the policy is greedy
    req = make_requests(world, torch.arange(8), make_generator(2))
    logits = ground_truth.attraction_logits(world, req.users, req.candidates)
    got = served_expected_clicks(world, req.users, req.candidates, logits, 1e-4, 2,
                                 make_generator(1))
    best = req.candidates.gather(1, ground_truth.oracle_slate(world, req.users, req.candidates))
    assert torch.allclose(got, ground_truth.expected_clicks(world, req.users, best), atol=1e-6)


def test_measure_target_groups_and_common_random_numbers():
    world = tiny_world()
    probe = make_probe_set(world, 20, make_generator(4))
    scores = torch.randn(len(probe), world.cfg.candidates.n_candidates,
                         generator=make_generator(0))
    groups = {"train": [0], "heldout": [1], "empty": [7]}
    a = measure_target(world, probe, scores, groups, 1.0, 2)
    assert a == measure_target(world, probe, scores, groups, 1.0, 2)  # same draw every call
    assert [g for _, g, _ in a] == ["train", "heldout"]  # groups without probe users are skipped
    gen = make_generator(probe.sample_seed)
    per_request = served_expected_clicks(world, probe.users, probe.candidates, scores, 1.0, 2, gen)
    assert a[0][2] == pytest.approx(float(per_request[:20].mean()))


def test_a_groups_expected_clicks_weight_cohorts_by_their_probe_users():
    """Three probe users of cohort 0 and one of cohort 1: the group of both is the mean over
    the four requests, not the mean of the two cohort means."""
    world = tiny_world()
    full = make_probe_set(world, 5, make_generator(4))
    rows = torch.tensor([0, 1, 2, 5])  # cohort 0 x 3, cohort 1 x 1
    probe = ProbeSet(users=full.users[rows], cohort=full.cohort[rows],
                     candidates=full.candidates[rows], slates=full.slates[rows],
                     label_seed=full.label_seed, sample_seed=full.sample_seed)
    assert probe.cohort.tolist() == [0, 0, 0, 1]
    scores = torch.randn(4, world.cfg.candidates.n_candidates, generator=make_generator(0))
    got = {g: v for _, g, v in measure_target(world, probe, scores, {"both": [0, 1]}, 1.0, 3)}
    per_request = served_expected_clicks(world, probe.users, probe.candidates, scores, 1.0, 3,
                                         make_generator(probe.sample_seed))
    assert got["both"] == pytest.approx(float(per_request.double().mean()), abs=1e-12)
    assert got["both"] != pytest.approx(
        0.5 * float(per_request[:3].double().mean() + per_request[3]), abs=1e-6)


# ---------------------------------------------------------------- KL to base


def test_first_position_kl_two_candidates_by_hand():
    s0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # p = (1/2, 1/2)
    st = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # q = (3/4, 1/4)
    kl = first_position_kl(s0, st)  # 1/2 log(2/3) + 1/2 log 2 = 1/2 log(4/3)
    assert float(kl) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    reverse = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(q || p): the wrong direction
    assert float(first_position_kl(st, s0)) == pytest.approx(reverse, abs=1e-12)
    # temperature 2 halves the logits: q = softmax(log(3)/2, 0) = (sqrt3, 1) / (sqrt3 + 1)
    q1 = 3**0.5 / (3**0.5 + 1)
    expected = 0.5 * (math.log(0.5 / q1) + math.log(0.5 / (1 - q1)))
    assert float(first_position_kl(s0, st, temperature=2.0)) == pytest.approx(expected, abs=1e-12)


def test_identical_policies_have_zero_kl_exactly():
    s = torch.randn(5, 9, generator=make_generator(0))
    assert torch.equal(first_position_kl(s, s.clone()), torch.zeros(5, dtype=torch.float64))
    assert torch.equal(slate_kl(s, s.clone(), 4, 3, make_generator(1)),
                       torch.zeros(5, dtype=torch.float64))


def test_slate_kl_matches_brute_force_enumeration():
    s0 = torch.tensor([[0.5, -0.2, 0.1]])
    st = torch.tensor([[-0.3, 0.4, 0.0]])
    slates = torch.tensor([[a, b] for a in range(3) for b in range(3) if a != b])  # all 6
    lp0 = slate_log_prob(s0.double().expand(6, 3), slates)
    lpt = slate_log_prob(st.double().expand(6, 3), slates)
    exact = float((lp0.exp() * (lp0 - lpt)).sum())
    mc = float(slate_kl(s0, st, 2, 40_000, make_generator(3)))
    assert mc == pytest.approx(exact, abs=0.01)
    # K = 1: the slate is the first position
    mc1 = float(slate_kl(s0, st, 1, 40_000, make_generator(4)))
    assert mc1 == pytest.approx(float(first_position_kl(s0, st)), abs=0.01)


def test_measure_kl_groups_average_their_requests():
    probe = ProbeSet(users=torch.arange(3), cohort=torch.tensor([0, 0, 1]),
                     candidates=torch.zeros(3, 2, dtype=torch.long),
                     slates=torch.zeros(3, 1, dtype=torch.long), label_seed=0, sample_seed=0)
    s0 = torch.zeros(3, 2)
    st = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [math.log(3.0), 0.0]])
    kl = measure_kl(probe, s0, st, {"train": [0], "heldout": [1]}, 1, 1.0, 2)
    out = {(m, g): v for m, g, v in kl}
    assert out["probe/kl_to_base", "train"] == pytest.approx(0.25 * math.log(4 / 3))
    assert out["probe/kl_to_base", "heldout"] == pytest.approx(0.5 * math.log(4 / 3))
    assert set(out) == {(m, g) for m in ("probe/kl_to_base", "probe/kl_to_base_slate")
                        for g in ("train", "heldout")}


def test_measure_kl_slate_term_is_kl_of_pi0_to_pit_with_fixed_draws():
    """The slate KL is KL(pi_0 || pi_t), sampled from pi_0 with the probe set's own draws
    (the same every call), not KL(pi_t || pi_0)."""
    probe = ProbeSet(users=torch.arange(4), cohort=torch.tensor([0, 0, 1, 1]),
                     candidates=torch.zeros(4, 5, dtype=torch.long),
                     slates=torch.zeros(4, 2, dtype=torch.long), label_seed=0, sample_seed=11)
    s0 = torch.randn(4, 5, generator=make_generator(1))
    st = 2.5 * torch.randn(4, 5, generator=make_generator(2))
    groups = {"train": [0], "heldout": [1]}
    got = {(m, g): v for m, g, v in measure_kl(probe, s0, st, groups, 2, 1.0, 64)}
    assert got == {(m, g): v for m, g, v in measure_kl(probe, s0, st, groups, 2, 1.0, 64)}
    forward = slate_kl(s0, st, 2, 64, make_generator(probe.sample_seed + 1), 1.0)  # (P,)
    reverse = slate_kl(st, s0, 2, 64, make_generator(probe.sample_seed + 1), 1.0)
    assert got["probe/kl_to_base_slate", "train"] == pytest.approx(float(forward[:2].mean()))
    assert got["probe/kl_to_base_slate", "heldout"] == pytest.approx(float(forward[2:].mean()))
    assert abs(float(forward[:2].mean() - reverse[:2].mean())) > 0.05  # the directions differ


# ---------------------------------------------------------------- feedback loop


def day_log(world: World, users: torch.Tensor, slates: torch.Tensor, day: int = 0,
            candidates: torch.Tensor | None = None) -> DayLog:
    """A one-day log of ``slates`` served to ``users`` (fresh candidates unless given)."""
    if candidates is None:
        candidates = make_requests(world, users, make_generator(9)).candidates
    items = candidates.gather(1, slates)
    b, k = slates.shape
    return DayLog(
        day=torch.full((b,), day), request_id=torch.arange(b), users=users,
        cohort=world.users.cohort[users], history=world.users.history[users],
        candidates=candidates, slates=slates, items=items,
        clicks=torch.zeros(b, k), log_propensity=torch.zeros(b),
        true_probs=ground_truth.click_probs(world, users, items), item_topic=world.items.topic)


def test_feedback_when_every_slate_shows_the_same_items():
    world = tiny_world()
    k, n_items = world.cfg.slate_size, world.n_items
    shown = torch.tensor([3, 10, 42, 7, 99])  # K = 5 items, shown to every request
    users = torch.arange(12)
    log = day_log(world, users, torch.arange(k).expand(12, k))
    log.items = shown.expand(12, k).clone()
    append_items(world, 10, make_generator(0))  # arrivals born on the day (not yet servable)
    world.items.birth_day[-10:] = 1
    out = feedback_metrics(log, world)
    assert out["feedback/coverage"] == pytest.approx(k / n_items)
    assert out["feedback/exposure_gini"] == pytest.approx(1 - k / n_items)  # K equal, rest 0
    assert out["feedback/exposure_entropy"] == pytest.approx(math.log(k))
    e = F.normalize(world.items.emb[shown].double(), dim=1)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    ild = sum(1 - float(e[i] @ e[j]) for i, j in pairs) / len(pairs)
    assert out["feedback/intra_list_diversity"] == pytest.approx(ild)
    chunked = feedback_metrics(log, world, batch_size=5)  # chunks of 5, 5, 2 requests
    assert chunked == pytest.approx(out)


def test_regret_is_zero_for_oracle_slates_and_positive_otherwise():
    world = tiny_world()
    users = torch.arange(20)
    req = make_requests(world, users, make_generator(9))
    oracle = ground_truth.oracle_slate(world, users, req.candidates)
    best = feedback_metrics(day_log(world, users, oracle, candidates=req.candidates), world)
    assert best["feedback/regret"] == pytest.approx(0.0, abs=1e-6)
    worst = (-ground_truth.attraction_logits(world, users, req.candidates)).topk(
        world.cfg.slate_size, dim=1).indices
    bad = feedback_metrics(day_log(world, users, worst, candidates=req.candidates), world)
    assert bad["feedback/regret"] > 0.05


def test_served_and_oracle_clicks_from_one_pass_match_the_ground_truth():
    world = tiny_world()
    users = torch.arange(20)
    cand = make_requests(world, users, make_generator(9)).candidates
    slates = torch.randperm(cand.shape[1], generator=make_generator(1))[:world.cfg.slate_size]
    slates = slates.expand(20, -1).contiguous()
    items = cand.gather(1, slates)
    fast = served_and_oracle_clicks(world, users, cand, items, slates)
    best = cand.gather(1, ground_truth.oracle_slate(world, users, cand))
    for got, want in zip(fast, (ground_truth.expected_clicks(world, users, items),
                                ground_truth.expected_clicks(world, users, best))):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(served_and_oracle_clicks(world, users, cand, items), fast)


def test_homogenisation_of_identical_and_opposite_users():
    world = tiny_world()
    log = day_log(world, torch.arange(4), torch.arange(5).expand(4, 5))
    world.users.interests[:] = torch.randn(world.users.interests.shape[1:],
                                           generator=make_generator(0))
    world.users.mode_weights[:] = torch.tensor([0.3, 0.7])  # tiny world: M = 2 modes
    assert feedback_metrics(log, world)["feedback/interest_homogenisation"] == pytest.approx(1.0)
    # two users left, with opposite mode-weighted interests: cosine -1
    world.users.active[:] = False
    world.users.active[:2] = True
    world.users.interests[1] = -world.users.interests[0]
    world.users.mode_weights[1] = world.users.mode_weights[0]
    assert feedback_metrics(log, world)["feedback/interest_homogenisation"] == pytest.approx(-1.0)
    w, z = world.users.mode_weights[0], world.users.interests[0]
    assert torch.allclose(mean_interest(world)[0], (w[:, None] * z).sum(0))


def test_feedback_of_an_empty_day_and_of_several_days():
    world = tiny_world()
    empty = DayLog.empty(world.items.topic, world.cfg.candidates.n_candidates,
                         world.cfg.slate_size, world.cfg.history_len)
    assert feedback_metrics(empty, world) == {}
    a = day_log(world, torch.arange(2), torch.arange(5).expand(2, 5))
    b = day_log(world, torch.arange(2), torch.arange(5).expand(2, 5), day=1)
    with pytest.raises(ValueError, match="one day"):
        feedback_metrics(DayLog.cat([a, b]), world)


# ---------------------------------------------------------------- parameter drift


def test_parameter_drift_on_hand_edited_tensors():
    dense_0 = {"w": torch.ones(6), "b": torch.zeros(2)}
    tables_0 = {"user": torch.ones(4, 3), "item": torch.full((2, 3), 2.0)}
    dense_t = {k: v.clone() for k, v in dense_0.items()}
    tables_t = {k: v.clone() for k, v in tables_0.items()}
    dense_t["w"][0] = 1.0 + 1e-6  # changed in fp32, not in bf16
    dense_t["b"][1] = 3.0  # changed in both
    tables_t["user"][1, 2] = 5.0  # row 1 of the user table
    out = parameter_drift(dense_0, tables_0, dense_t, tables_t)
    n = 6 + 2 + 12 + 6
    assert out["drift/share_unchanged"] == pytest.approx((n - 3) / n)
    assert out["drift/share_unchanged_bf16"] == pytest.approx((n - 2) / n)
    assert out["drift/dense_rel_l2"] == pytest.approx(math.sqrt((1e-6**2 + 9) / 6), rel=1e-4)
    assert out["drift/sparse_rel_l2"] == pytest.approx(math.sqrt(16 / (12 + 24)))
    same = parameter_drift(dense_0, tables_0, dense_0, tables_0)
    assert same["drift/share_unchanged"] == 1.0 and same["drift/dense_rel_l2"] == 0.0
    with pytest.raises(ValueError, match="differ by name"):
        parameter_drift(dense_0, tables_0, {"w": dense_t["w"]}, tables_t)


def test_rows_touched_per_cohort_with_and_without_hashing():
    cohort = torch.tensor([0, 0, 1, 1])
    table_0 = torch.zeros(4, 2)
    table_t = table_0.clone()
    table_t[1, 0] = 1.0  # user 1 (cohort 0)
    assert rows_touched_by_cohort(table_0, table_t, cohort) == {0: 0.5, 1: 0.0}
    # hashed: 8 users into 3 rows; cohort k's share = touched among the distinct rows it reads
    cohort = torch.tensor([0, 1] * 4)
    rows = user_rows(torch.arange(8), 3, 8)
    table_0, table_t = torch.zeros(3, 2), torch.zeros(3, 2)
    table_t[int(rows[0])] = 1.0  # the row of user 0 (cohort 0)
    got = rows_touched_by_cohort(table_0, table_t, cohort)
    for k in (0, 1):
        mine = rows[cohort == k].unique()
        assert got[k] == pytest.approx(float((mine == rows[0]).double().sum() / mine.numel()))


def test_measure_drift_on_a_real_scorer():
    cfg = ModelConfig(embedding_dim=4, head_width=8, device="cpu")
    ref = build_scorer(cfg, 6, 10, 3, torch.Generator().manual_seed(0))
    pol = build_scorer(cfg, 6, 10, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pol.table_weights()["user"][4] += 1.0  # user 4
        pol.mlp[-1].bias += 1.0
    cohort = torch.tensor([0, 0, 0, 1, 1, 1])
    out = {(m, g): v for m, g, v in measure_drift(pol, ref, cohort)}
    assert out["drift/rows_touched", "c0"] == 0.0
    assert out["drift/rows_touched", "c1"] == pytest.approx(1 / 3)
    n_params = sum(p.numel() for p in ref.parameters())
    assert out["drift/share_unchanged", None] == pytest.approx(1 - 5 / n_params)
    assert out["drift/sparse_rel_l2", None] > 0 and out["drift/dense_rel_l2", None] > 0


# ---------------------------------------------------------------- the daily probe_fn


@dataclass
class FakeState:
    """What DailyProbes reads from the loop's RunState."""

    config: object
    world: World
    policy: object
    reference: object
    log: DayLog | None = None
    rows: list | None = None

    def groups(self):
        return {"train": [0], "heldout": [1]}

    def rows_for(self, step, values, group=None):
        return metric_rows(domain="recsys", experiment="t", regime="r", seed=0, step=step,
                           values=values, group=group)


def test_daily_probes_names_groups_and_step0_identities():
    world = tiny_world()
    cfg = ModelConfig(embedding_dim=4, head_width=8, device="cpu")
    ids = (world.n_users, world.n_items, world.n_topics)
    ref = build_scorer(cfg, *ids, torch.Generator().manual_seed(0))
    pol = build_scorer(cfg, *ids, torch.Generator().manual_seed(0))
    state = FakeState(config=type("C", (), {"seed": 0, "serving_temperature": 1.0})(),
                      world=world, policy=pol, reference=ref)
    probes = DailyProbes(ProbeConfig(users_per_cohort=20, slate_samples=2))
    state.rows = probes(0, state)
    frame = to_frame(state.rows)
    got = {(r["metric"], r["group"]): r["value"] for r in state.rows}
    for g in ("c0", "c1"):
        assert ("probe/auc", g) in got and ("probe/auc_oracle", g) in got
    for g in ("train", "heldout"):
        assert got["probe/kl_to_base", g] == 0.0 and got["probe/kl_to_base_slate", g] == 0.0
        assert ("target/expected_clicks", g) in got
    assert got["target/gain", None] == 0.0 and got["probe/drop", None] == 0.0
    assert got["drift/share_unchanged", None] == 1.0
    assert not any(m.startswith("feedback/") for m, _ in got)  # no served day yet
    assert frame.height == len(state.rows)
    # a day later: the policy moved, a day was served, gain/drop are against step 0
    with torch.no_grad():
        pol.mlp[-1].bias += 0.5
        pol.table_weights()["item"].mul_(3.0)
    users = torch.arange(30)
    state.log = day_log(world, users, torch.arange(5).expand(30, 5))
    rows = probes(1, state)
    later = {(r["metric"], r["group"]): r["value"] for r in rows}
    assert later["probe/kl_to_base", "train"] > 0 and "feedback/regret" in {m for m, _ in later}
    assert later["target/gain", None] == pytest.approx(
        later["target/expected_clicks", "train"] - got["target/expected_clicks", "train"])
    assert later["probe/drop", None] == pytest.approx(
        got["target/expected_clicks", "heldout"] - later["target/expected_clicks", "heldout"])
    assert later["drift/share_unchanged", None] < 1.0
    assert torch.equal(state.probe_state["probe_set"]["users"],
                       make_probe_set(world, 20, _probe_gen(0)).users)


def test_daily_probes_use_the_serving_temperature_and_noise_free_labels():
    """Expected clicks and KL are those of the policy as served (its temperature), and the AUC
    labels follow ProbeConfig.noise_free."""
    world = tiny_world()
    cfg = ModelConfig(embedding_dim=4, head_width=8, device="cpu")
    ids = (world.n_users, world.n_items, world.n_topics)
    ref = build_scorer(cfg, *ids, torch.Generator().manual_seed(0))
    pol = build_scorer(cfg, *ids, torch.Generator().manual_seed(1))
    with torch.no_grad():  # spread the scores: at init they are nearly equal
        for t in ("user", "item", "topic"):
            pol.table_weights()[t].mul_(40.0)
    for temperature, noise_free in ((2.0, True), (1.0, False)):
        state = FakeState(config=type("C", (), {"seed": 0, "serving_temperature": temperature})(),
                          world=world, policy=pol, reference=ref)
        pcfg = ProbeConfig(users_per_cohort=20, slate_samples=2, noise_free=noise_free)
        got = {(m, g): v for m, g, v in DailyProbes(pcfg).measure(0, state)}
        probe = ProbeSet.from_state(state.probe_state["probe_set"], world.device)
        with torch.no_grad():
            st, s0 = (score_probes(m, probe, world, 64) for m in (pol, ref))
        groups = state.groups()
        want = {(m, g): v for m, g, v in
                measure_target(world, probe, st, groups, temperature, 2)
                + measure_kl(probe, s0, st, groups, world.cfg.slate_size, temperature, 2)
                + measure_auc(world, probe, st, noise_free)}
        assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-12)
        other = {(m, g): v for m, g, v in
                 measure_target(world, probe, st, groups, 3.0 - temperature, 2)
                 + measure_auc(world, probe, st, not noise_free)}
        for key in (("target/expected_clicks", "train"), ("probe/auc", "c0")):
            assert other[key] != pytest.approx(got[key], abs=1e-9), key


def _probe_gen(seed: int) -> torch.Generator:
    from recsys_onpolicy.run_state import stream_generator
    return stream_generator(seed, "probe_set", "cpu")


def test_daily_probes_refuse_to_start_after_step0():
    world = tiny_world()
    state = FakeState(config=type("C", (), {"seed": 0, "serving_temperature": 1.0})(),
                      world=world, policy=None, reference=None)
    with pytest.raises(RuntimeError, match="probe_state"):
        DailyProbes()(3, state)


def test_daily_probes_in_the_daily_loop(tmp_path):
    from recsys_onpolicy.loop import run
    from recsys_onpolicy.run_config import RecsysRunConfig

    cfg = RecsysRunConfig(
        world=tiny(), model=ModelConfig(embedding_dim=8, head_width=16, device="cpu"),
        regime="supervised_daily", days=3, removal={"cohort": 1, "from_day": 1},
        warmup={"days": 1}, checkpoint={"enabled": False}, write_logs=False)
    frame = run(cfg, tmp_path, probe_fn=DailyProbes(ProbeConfig(users_per_cohort=30)),
                progress=False)

    def value(metric, step, group=None):
        part = frame.filter((pl.col("metric") == metric) & (pl.col("step") == step)
                            & (pl.col("group").is_null() if group is None
                               else pl.col("group") == group))
        assert part.height == 1, (metric, step, group)
        return part["value"][0]

    assert set(frame["step"]) == {0, 1, 2, 3}
    assert {m for m in frame["metric"] if m.startswith("feedback/")} == {
        "feedback/exposure_gini", "feedback/coverage", "feedback/exposure_entropy",
        "feedback/intra_list_diversity", "feedback/interest_homogenisation", "feedback/regret"}
    for g in ("train", "heldout"):  # the loop's policy and its frozen copy agree at step 0
        assert abs(value("probe/kl_to_base", 0, g)) < 1e-6
    assert value("drift/share_unchanged", 0) == 1.0
    assert value("target/gain", 0) == 0.0 and value("probe/drop", 0) == 0.0
    for step in (1, 2, 3):  # against day 0, not the day before
        assert value("target/gain", step) == pytest.approx(
            value("target/expected_clicks", step, "train")
            - value("target/expected_clicks", 0, "train"), abs=1e-12)
        assert value("probe/drop", step) == pytest.approx(
            value("target/expected_clicks", 0, "heldout")
            - value("target/expected_clicks", step, "heldout"), abs=1e-12)
    # supervised_daily never touches the removed cohort's user rows after it left (day 1 on)
    assert value("drift/rows_touched", 3, "c1") == value("drift/rows_touched", 1, "c1") > 0
    assert value("drift/rows_touched", 3, "c0") >= value("drift/rows_touched", 1, "c0")
    assert value("probe/auc_oracle", 2, "c0") == value("probe/auc_oracle", 0, "c0")  # no dynamics
