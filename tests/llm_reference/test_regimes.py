"""Each regime on a tiny model through RunContext: what it trains on, and facts that follow from
the objectives (zero reward or equal group rewards -> no update; the KL penalty's gradient is
zero while pi == pi_0)."""

import copy

import pytest
import torch
from lightning.fabric import Fabric

from llm_reference.config import GPTConfig, RegimeConfig, TaskConfig
from llm_reference.gpt import GPT
from llm_reference.regimes import REGIMES, RunContext, Traces
from llm_reference.sampling import answer_samples, completion_logprob
from llm_reference.tasks import build_suite
from llm_reference.tokenizer import CharTokenizer

TOK = CharTokenizer()
SUITE = build_suite(TaskConfig(n_eval=4, non_target=["copying"]))
FABRIC = Fabric(accelerator="cpu", devices=1, precision="32-true")


def make_ctx(steps=2, **changes) -> tuple[RunContext, GPT, list[tuple[int, dict]]]:
    cfg = RegimeConfig(
        **{
            "steps": steps,
            "batch_prompts": 2,
            "group_size": 2,
            "n_train_prompts": 4,
            "rounds": 1,
            "lr": 1e-2,
            **changes,
        }
    )
    base = GPT(
        GPTConfig(block_size=24, n_layer=1, n_head=2, n_embd=16),
        TOK.vocab_size,
        generator=torch.Generator().manual_seed(0),
    )
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    model = copy.deepcopy(base)
    policy, opt = FABRIC.setup(model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
    logged: list[tuple[int, dict]] = []
    ctx = RunContext(
        policy=policy,
        ref=ref,
        codec=TOK,
        suite=SUITE,
        cfg=cfg,
        fabric=FABRIC,
        optimizer=opt,
        gen=torch.Generator().manual_seed(1),
        log_step=lambda s, v: logged.append((s, v)),
    )
    return ctx, model, logged


def params(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()]).clone()


def constant_rewards(ctx: RunContext, value: float) -> None:
    ctx.rewards = lambda s: torch.full((len(s),), value)  # instance attribute shadows the method


def test_registry_has_every_preset():
    assert set(REGIMES) == {
        "teacher_sft",
        "self_sft",
        "iterative_sft",
        "reinforce",
        "grpo",
        "grpo_kl",
        "sft_on_rl_traces",
    }
    for fn in set(REGIMES.values()):
        assert "How this differs from the paper" in fn.__doc__


def test_reinforce_with_zero_reward_does_not_move():
    ctx, model, logged = make_ctx()
    constant_rewards(ctx, 0.0)
    before = params(model)
    REGIMES["reinforce"](ctx)
    assert torch.equal(params(model), before)
    assert [s for s, _ in logged] == [1, 2] and logged[0][1]["train/reward"] == 0.0


def test_reinforce_with_reward_moves():
    ctx, model, _ = make_ctx()
    constant_rewards(ctx, 1.0)
    before = params(model)
    REGIMES["reinforce"](ctx)
    assert not torch.equal(params(model), before)


def record_samples(ctx: RunContext) -> list:
    """Make ``ctx.sample`` keep every batch it draws; returns that list."""
    drawn, original = [], ctx.sample

    def sample(prompts, k, model=None):
        drawn.append(original(prompts, k, model=model))
        return drawn[-1]

    ctx.sample = sample  # instance attribute shadows the method
    return drawn


def test_reinforce_scores_its_samples_at_the_sampling_temperature():
    # reward 1: loss = -mean log pi_T(y) under the policy before the update (= the frozen base)
    ctx, _, logged = make_ctx(steps=1, temperature=0.5)
    constant_rewards(ctx, 1.0)
    drawn = record_samples(ctx)
    REGIMES["reinforce"](ctx)
    with torch.no_grad():
        at_t = -completion_logprob(ctx.ref, TOK, drawn[0], ctx.device, 0.5).mean().item()
        at_1 = -completion_logprob(ctx.ref, TOK, drawn[0], ctx.device, 1.0).mean().item()
    # the untrained model's logits are small, so T barely matters: measured 22.568 vs 22.489
    assert abs(at_t - at_1) > 0.05
    assert logged[0][1]["train/loss"] == pytest.approx(at_t, abs=1e-3)


def test_grpo_normalises_advantages_within_each_prompt_group():
    # prompt-major batch [p0, p0, p1, p1]: group 0 all right, group 1 all wrong -> every group
    # advantage is 0 and nothing moves (normalised over the whole batch they would be +-1)
    ctx, model, _ = make_ctx(steps=2)
    ctx.rewards = lambda s: torch.tensor([1.0, 1.0, 0.0, 0.0])
    before = params(model)
    REGIMES["grpo"](ctx)
    assert torch.equal(params(model), before)


def test_grpo_with_equal_group_rewards_does_not_move_and_returns_traces():
    ctx, model, _ = make_ctx(steps=3)
    constant_rewards(ctx, 1.0)
    before = params(model)
    traces = REGIMES["grpo"](ctx)
    assert torch.equal(params(model), before)  # zero advantage everywhere
    assert len(traces.samples) == len(traces.rewards) == 3 * 2 * 2
    assert all(p.startswith("N") for p in traces.samples.prompts)


def test_grpo_kl_penalty_has_zero_gradient_while_policy_equals_base():
    ctx, model, logged = make_ctx(steps=1, beta=0.05)
    constant_rewards(ctx, 0.0)
    before = params(model)
    REGIMES["grpo_kl"](ctx)
    assert logged[0][1]["train/kl_penalty"] == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(params(model), before, atol=1e-7, rtol=0)


def test_grpo_kl_penalty_pulls_a_moved_policy_back_to_the_base():
    """With zero rewards only the penalty acts: a policy moved away from pi_0 comes back. KL
    (pi_0 || pi), the direction k3's gradient follows, is estimated on a fixed set of base
    samples before and after 8 steps; it would stay 0 if the reference were the policy."""
    ctx, model, _ = make_ctx(steps=8, beta=1.0, batch_prompts=4, group_size=4, lr=1e-2)
    constant_rewards(ctx, 0.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    t = ctx.cfg.temperature
    fixed = ctx.sample(ctx.train_prompts(16), 4, model=ctx.ref)  # 64 samples of pi_0

    def kl_base_to_policy() -> float:
        with torch.no_grad():
            gap = ctx.logp(fixed, model=ctx.ref, temperature=t) - ctx.logp(fixed, temperature=t)
        return gap.mean().item()

    before = kl_base_to_policy()
    REGIMES["grpo_kl"](ctx)
    after = kl_base_to_policy()
    assert before > 0.3 and after < 0.6 * before, (before, after)  # measured 0.86 -> 0.34


def test_grpo_learns_from_mixed_rewards():
    ctx, model, _ = make_ctx(steps=1)
    ctx.rewards = lambda s: torch.tensor([float(i % 2) for i in range(len(s))])
    before = params(model)
    REGIMES["grpo"](ctx)
    assert not torch.equal(params(model), before)


def test_teacher_sft_raises_the_likelihood_of_teacher_answers():
    ctx, _, logged = make_ctx(steps=6, n_train_prompts=2, batch_prompts=1)
    gen_state = ctx.gen.get_state()
    prompts = ctx.train_prompts(2)  # the prompts teacher_sft will draw (same generator state)
    ctx.gen.set_state(gen_state)
    data = answer_samples(TOK, prompts, [SUITE.target.teacher_answer(p) for p in prompts])
    before = ctx.logp(data).mean().item()
    REGIMES["teacher_sft"](ctx)
    assert ctx.logp(data).mean().item() > before + 1.0
    assert [s for s, _ in logged] == list(range(1, 7))
    assert logged[-1][1]["train/loss"] < logged[0][1]["train/loss"]


def test_self_sft_with_nothing_kept_stays_put():
    ctx, model, logged = make_ctx()
    constant_rewards(ctx, 0.0)
    before = params(model)
    REGIMES["self_sft"](ctx)
    assert torch.equal(params(model), before)
    assert logged[0][1] == {"train/loss": 0.0, "train/kept_fraction": 0.0}


def test_self_sft_samples_the_base_and_iterative_sft_the_current_policy():
    calls = []
    for preset, rounds in (("self_sft", 1), ("iterative_sft", 3)):
        ctx, model, logged = make_ctx(steps=4, rounds=rounds)
        constant_rewards(ctx, 1.0)
        original = ctx.sample
        ctx.sample = lambda prompts, k, model=None, _o=original, _c=ctx, _p=preset: (
            calls.append((_p, model is _c.ref, model is _c.policy)) or _o(prompts, k, model=model)
        )
        before = params(model)
        REGIMES[preset](ctx)
        assert not torch.equal(params(model), before)
        assert [s for s, _ in logged] == [1, 2, 3, 4]
        assert all(v["train/kept_fraction"] == 1.0 for _, v in logged)
    assert calls == [("self_sft", True, False)] + [("iterative_sft", False, True)] * 3


def test_sft_on_rl_traces_keeps_correct_traces_only():
    ctx, model, logged = make_ctx()
    with pytest.raises(ValueError, match="needs the samples of a GRPO run"):
        REGIMES["sft_on_rl_traces"](ctx)
    prompts = ctx.train_prompts(4)
    samples = answer_samples(TOK, prompts, [SUITE.target.answer(p) for p in prompts])
    ctx.traces = Traces(samples, [1.0, 0.0, 0.0, 1.0])
    before = params(model)
    REGIMES["sft_on_rl_traces"](ctx)
    assert not torch.equal(params(model), before)
    assert logged[0][1]["train/kept_fraction"] == 0.5


def test_minibatches_cover_an_epoch_with_full_batches():
    ctx, _, _ = make_ctx(batch_prompts=2, group_size=2)
    prompts = [f"C{i}:" for i in range(10)]
    data = answer_samples(TOK, prompts, [p[1:-1] for p in prompts])
    it = ctx.minibatches(data)
    epoch = [next(it) for _ in range(2)]  # 10 sequences: two full batches of 4, ragged tail dropped
    assert [len(b) for b in epoch] == [4, 4]
    assert len(set(epoch[0].prompts) | set(epoch[1].prompts)) == 8
    with pytest.raises(ValueError, match="no training sequences"):
        next(ctx.minibatches(answer_samples(TOK, [], [])))
