"""On-policy slate RL: REINFORCE, GRPO (with or without KL to pi_0) and PPO-style reuse.

For every update batch of requests the current Plackett-Luce policy samples G slates per
request, the simulator answers them (reward = clicks, or expected clicks), and the policy's
log-probability of each slate is pushed up in proportion to its advantage:

- ``reinforce``: advantage = reward (``baseline: none``, the paper's ablation) or reward minus
  the group mean (G >= 2) / the batch mean (``baseline: mean``).
- ``grpo``: (reward - group mean) / (group std + eps) (DeepSeekMath), one update per batch.
  With ``group_source: batch`` the "group" is the whole batch of one-slate requests: the
  production-realistic variant (a real user sees one slate per request).
- ``ppo``: GRPO's advantages, PPO's clipped ratio to the sampling policy, ``epochs`` updates
  on each sampled batch (near-on-policy: later epochs use data of an older policy).
- ``beta > 0`` adds beta * mean KL estimate (k1/k2/k3) between the current policy and the
  frozen pi_0 on the sampled slates.

How this differs from the papers (Chen et al. 2025, "Retaining by Doing"; Shao et al. 2024):
- A slate is a one-step "sequence" of K items from C candidates with an exact Plackett-Luce
  log-probability; there is no token-level credit assignment and no value network (the group
  mean is the baseline, as in GRPO). PPO here is therefore GRPO + clipped ratio + reuse, not
  actor-critic PPO with GAE.
- Losses average over slates (not tokens); GRPO's advantage uses the population std of the
  group (an all-equal group gets zero advantage).
- The reward is the slate's click count from a simulated user, not a verifier; with
  ``group_source: simulator`` the G answers for one request come from the simulator's ground
  truth, which no production system has.
- The KL penalty is added to the loss (as in GRPO), estimated on the sampled slates; PPO's
  later epochs reuse the reference log-probabilities of the sampled slates.
"""
from __future__ import annotations

import torch

from recsys_onpolicy.objectives import (
    grpo_advantages,
    kl_penalty,
    policy_gradient_loss,
    ppo_clipped_loss,
    reinforce_loss,
)
from recsys_onpolicy.regimes.config import RegimeConfig
from recsys_onpolicy.regimes.context import TrainContext
from recsys_onpolicy.regimes.data import Requests, SlateBatch, minibatches, sampled_data, score
from recsys_onpolicy.slate_policy import slate_log_prob


def advantages(rewards: torch.Tensor, regime: RegimeConfig) -> torch.Tensor:
    """Advantages (B, G) of slates with rewards (B, G) under the regime's estimator.

    ``reinforce`` returns the reward itself (``baseline: none``) or the reward minus its group
    mean (G >= 2) / batch mean (G = 1). ``grpo`` / ``ppo`` normalise within the group
    (``group_source: simulator``) or across the batch (``batch``); a batch of one slate gets a
    zero advantage.
    """
    if regime.loss == "reinforce":
        if regime.baseline == "none":
            return rewards
        if rewards.shape[1] >= 2:
            return rewards - rewards.mean(dim=1, keepdim=True)
        return rewards - rewards.mean()
    if regime.group_source == "simulator":
        return grpo_advantages(rewards, scale=regime.scale_advantages)
    flat = rewards.reshape(1, -1)  # (1, B*G): the batch is the group
    if flat.shape[1] < 2:
        return torch.zeros_like(rewards)
    return grpo_advantages(flat, scale=regime.scale_advantages).view_as(rewards)


def pg_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    logp_ref: torch.Tensor | None,
    regime: RegimeConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The regime's policy-gradient loss on slates, plus beta * KL when beta > 0.

    Args:
        logp: (N,) log-probabilities under the current policy (with grad).
        logp_old: (N,) under the policy that sampled the slates (PPO's ratio).
        adv: (N,) advantages (for REINFORCE: the reward minus its baseline).
        logp_ref: (N,) under the frozen pi_0, or None when beta = 0.
    Returns:
        (loss, mean KL estimate or None).
    """
    if regime.loss == "reinforce":
        loss = reinforce_loss(logp, adv)  # adv = R - b already
    elif regime.loss == "grpo":
        loss = policy_gradient_loss(logp, adv)
    elif regime.loss == "ppo":
        loss = ppo_clipped_loss(logp, logp_old, adv, clip=regime.clip)
    else:
        raise ValueError(f"loss = {regime.loss!r} is not a policy-gradient loss")
    if logp_ref is None or regime.beta == 0:
        return loss, None
    kl = kl_penalty(logp, logp_ref, regime.kl_estimator).mean()
    return loss + regime.beta * kl, kl


def update(ctx: TrainContext, requests: Requests) -> SlateBatch:
    """Sample G slates per request from the current policy, get rewards, and take ``epochs``
    gradient steps on them. Returns the sampled slates and rewards (the companion's traces)."""
    r, t = ctx.regime, ctx.temperature
    # One forward per request (B, C) serves the sampling, the old log-probabilities and the
    # first step's gradient; pi_0 is scored only when the KL term needs it (beta > 0).
    scores = ctx.policy_scores(requests)  # (B, C), with grad for the first step
    data = sampled_data(ctx.world, requests, scores, r.group_size, t, r.reward, ctx.gen)
    slates = data.slates.to(scores.device)  # (B, G, K)
    logp = slate_log_prob(scores, slates, t).reshape(-1)  # (B*G,) of all G slates at once
    logp_old = logp.detach()  # the sampling policy's (PPO's ratio)
    adv = advantages(data.rewards, r).to(scores.device).reshape(-1)  # (B*G,)
    logp_ref = None
    if r.beta > 0:
        with torch.no_grad():
            ref_scores = score(ctx.reference, requests, scores.device)  # (B, C)
            logp_ref = slate_log_prob(ref_scores, slates, t).reshape(-1)  # (B*G,)
    ctx.stats.add_slates(data.rewards)
    for epoch in range(r.epochs):
        if epoch > 0:
            scores = ctx.policy_scores(requests)
            logp = slate_log_prob(scores, slates, t).reshape(-1)  # (B*G,)
        loss, kl = pg_loss(logp, logp_old, adv, logp_ref, r)
        ctx.policy.step(loss)
        ctx.stats.add_update(loss, kl)
    return data


def train_policy_gradient(ctx: TrainContext, log: Requests) -> None:
    """One :func:`update` per random minibatch of ``batch_size`` requests (strictly on-policy:
    every batch is sampled by the policy as it is right then)."""
    for idx in minibatches(len(log), ctx.batch_size, ctx.gen):
        update(ctx, log.select(idx))
