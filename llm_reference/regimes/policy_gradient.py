"""On-policy regimes (loss: policy gradient on fresh samples): reinforce, grpo, grpo_kl.

Every update: draw ``batch_prompts`` training prompts, sample ``group_size`` answers to each from
the *current* policy at ``temperature``, score them with the verifier, take one gradient step,
discard the batch (one update per batch: ratio 1, strictly on-policy, so PPO's clip never acts
and is left out). Log-probabilities are those of the tempered policy that drew the samples.
"""

from __future__ import annotations

import torch

from llm_reference.regimes.context import RunContext, Traces
from llm_reference.sampling import Samples
from recsys_onpolicy.objectives import (
    grpo_advantages,
    kl_penalty,
    policy_gradient_loss,
    reinforce_loss,
)


def _fresh_batch(ctx: RunContext) -> tuple[Samples, torch.Tensor]:
    """A batch sampled from the current policy and its rewards (N,) = (B * G,)."""
    samples = ctx.sample(ctx.train_prompts(ctx.cfg.batch_prompts), ctx.cfg.group_size)
    return samples, ctx.rewards(samples)


def reinforce(ctx: RunContext) -> None:
    """REINFORCE with the 0/1 reward as the weight, no baseline, no KL.

    How this differs from the paper: the same estimator (-R * log pi(y)), with sequence-level
    log-probabilities averaged over the B x G samples of a batch; G samples per prompt so the
    data per update matches GRPO.
    """
    for step in range(1, ctx.cfg.steps + 1):
        samples, r = _fresh_batch(ctx)
        loss = reinforce_loss(ctx.logp(samples, temperature=ctx.cfg.temperature), r)
        ctx.update(loss)
        ctx.log_step(step, {"train/loss": loss.item(), "train/reward": r.mean().item()})


def grpo(ctx: RunContext) -> Traces:
    """GRPO: group-normalised advantages, optional KL penalty (grpo: beta 0, grpo_kl: 0.05).

    How this differs from the paper: advantages weight the *sequence* log-probability and the
    KL penalty is a sequence-level estimator (``kl_estimator``, k3 by default: its gradient is
    that of KL(pi_0 || pi), see ``objectives.kl_penalty``) on the samples, where the paper uses
    token-level terms; one update per batch, so there is
    no importance ratio or clipping. Returns every sample with its reward (for sft_on_rl_traces).
    """
    B, G = ctx.cfg.batch_prompts, ctx.cfg.group_size
    all_samples, all_rewards = [], []
    for step in range(1, ctx.cfg.steps + 1):
        samples, r = _fresh_batch(ctx)
        adv = grpo_advantages(r.view(B, G)).flatten()  # (B * G,)
        logp = ctx.logp(samples, temperature=ctx.cfg.temperature)  # (B * G,)
        loss = policy_gradient_loss(logp, adv)
        stats = {"train/reward": r.mean().item()}
        if ctx.cfg.beta > 0:
            with torch.no_grad():
                logp_ref = ctx.logp(samples, model=ctx.ref, temperature=ctx.cfg.temperature)
            kl = kl_penalty(logp, logp_ref, ctx.cfg.kl_estimator).mean()
            loss = loss + ctx.cfg.beta * kl
            stats["train/kl_penalty"] = kl.item()
        ctx.update(loss)
        ctx.log_step(step, {"train/loss": loss.item(), **stats})
        all_samples.append(samples)
        all_rewards += r.tolist()
    return Traces(Samples.cat(all_samples), all_rewards)
