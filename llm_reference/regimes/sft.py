"""Supervised regimes (loss ``sequence_nll``): teacher_sft, self_sft, iterative_sft,
sft_on_rl_traces.

They differ only in where the kept sequences come from:

================ ========================================================= ===========
preset           data                                                      filter
================ ========================================================= ===========
teacher_sft      the teacher's answers to ``n_train_prompts`` prompts      all correct
self_sft         ``group_size`` samples per prompt from the base, once     reward = 1
iterative_sft    the same, regenerated from the current model every round  reward = 1
sft_on_rl_traces the samples the same seed's GRPO run generated            reward = 1*
================ ========================================================= ===========

(* all samples when ``traces_keep_correct`` is false.) Each update is the mean sequence NLL over
``batch_prompts x group_size`` kept sequences, drawn by epochs over the dataset.
"""

from __future__ import annotations

from llm_reference.regimes.context import RunContext
from llm_reference.sampling import Samples, answer_samples
from recsys_onpolicy.objectives import sequence_nll


def _sft(
    ctx: RunContext, data: Samples, first_step: int, n_steps: int, extra: dict[str, float]
) -> None:
    """``n_steps`` NLL updates on minibatches of ``data``; no update when ``data`` is empty."""
    batches = ctx.minibatches(data) if len(data) else None
    for step in range(first_step, first_step + n_steps):
        if batches is None:  # nothing survived the filter: no update, the step is still logged
            ctx.log_step(step, {"train/loss": 0.0, **extra})
            continue
        loss = sequence_nll(ctx.logp(next(batches)))
        ctx.update(loss)
        ctx.log_step(step, {"train/loss": loss.item(), **extra})


def _filtered_self_samples(ctx: RunContext, model) -> tuple[Samples, float]:
    """``group_size`` samples per training prompt from ``model``, keeping reward-1 ones."""
    samples = ctx.sample(
        ctx.train_prompts(ctx.cfg.n_train_prompts), ctx.cfg.group_size, model=model
    )
    keep = ctx.rewards(samples) > 0
    return samples.select(keep.tolist()), float(keep.float().mean())


def teacher_sft(ctx: RunContext) -> None:
    """SFT on a teacher's answers: the off-policy expert.

    How this differs from the paper: the paper's teacher is Llama-3.3-70B writing free-form
    solutions; ours is an exact solver that writes a valid answer in a fixed style the base
    model never saw (positive terms first, descending), one answer per training prompt. The loss
    is the summed-token NLL per sequence averaged over sequences (the paper averages tokens).
    """
    target = ctx.suite.target
    prompts = ctx.train_prompts(ctx.cfg.n_train_prompts)
    data = answer_samples(ctx.codec, prompts, [target.teacher_answer(p) for p in prompts])
    _sft(ctx, data, 1, ctx.cfg.steps, {})


def self_sft(ctx: RunContext) -> None:
    """Self-SFT: the base model's own correct answers, sampled once before training.

    How this differs from the paper: same recipe (sample from the initial model, keep what the
    verifier accepts, SFT), with ``group_size`` samples per prompt at the regime temperature
    instead of the paper's sampling settings, and a fixed number of updates rather than epochs.
    """
    data, kept = _filtered_self_samples(ctx, ctx.ref)
    _sft(ctx, data, 1, ctx.cfg.steps, {"train/kept_fraction": kept})


def iterative_sft(ctx: RunContext) -> None:
    """Iterative-SFT: regenerate from the current model and filter at the start of every round.

    How this differs from the paper: the paper regenerates once per epoch over its training set;
    here ``rounds`` rounds share ``steps`` updates (as evenly as possible), each round sampling
    ``group_size`` answers to ``n_train_prompts`` fresh training prompts from the current policy.
    """
    rounds = ctx.cfg.rounds
    per_round = [
        ctx.cfg.steps // rounds + (1 if r < ctx.cfg.steps % rounds else 0) for r in range(rounds)
    ]
    step = 1
    for n in per_round:
        data, kept = _filtered_self_samples(ctx, ctx.policy)
        _sft(ctx, data, step, n, {"train/kept_fraction": kept})
        step += n


def sft_on_rl_traces(ctx: RunContext) -> None:
    """SFT from the base model on the samples a GRPO run (same seed) generated.

    How this differs from the paper: the traces come from our GRPO preset (beta 0); with
    ``traces_keep_correct`` only reward-1 samples are kept (the paper trains on RL's successful
    generations). Updates are minibatches over all traces in random order, not in RL's order.
    """
    if ctx.traces is None:
        raise ValueError(
            "sft_on_rl_traces needs the samples of a GRPO run (RunContext.traces); "
            "the recipe supplies them"
        )
    data = ctx.traces.samples
    if ctx.cfg.traces_keep_correct:
        data = data.select([r > 0 for r in ctx.traces.rewards])
    _sft(
        ctx,
        data,
        1,
        ctx.cfg.steps,
        {"train/kept_fraction": len(data) / max(1, len(ctx.traces.samples))},
    )
