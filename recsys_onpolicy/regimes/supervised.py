"""Supervised increments (``supervised_daily``): pointwise click BCE on logged impressions.

The production norm: at the end of each day the ranker is trained on that day's logged
impressions (served item -> clicked or not) and deployed for the next day. In the language of
LLM post-training it is off-policy supervised fine-tuning: the data were chosen by yesterday's
policy, and the loss fits click probabilities, not the slate distribution.

How this differs from the papers (Chen et al. 2025 compare SFT on a teacher's answers with RL):
- The labels are the user's clicks on what was served, not an expert's sequences; the closest
  LLM analogue is SFT on one's own filtered outputs, except that the unclicked impressions are
  negatives here (BCE), which SFT has no counterpart for.
- No propensity correction: the impressions are weighted equally whatever their logging
  probability, as in most production rankers. (Logged propensities are in the Parquet logs for
  anyone who wants inverse-propensity weighting.)
- The policy it deploys is Plackett-Luce over the learned click logits at the serving
  temperature, the same as every other regime, so the comparison is about training only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from recsys_onpolicy.objectives import pointwise_bce
from recsys_onpolicy.regimes.context import TrainContext
from recsys_onpolicy.regimes.data import Requests, logged_data, minibatches


def bce_loss(logits: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
    """Click BCE of served impressions: logits (B, K) of the served items, clicks (B, K) 0/1."""
    return pointwise_bce(logits.reshape(-1), clicks.to(logits.device).reshape(-1))


def served_logits(ctx: TrainContext, log: Requests,
                  topics: torch.Tensor | None = None) -> torch.Tensor:
    """Click logits (B, K) of the served items only (the model scores any item list, so the
    other C - K candidates are not scored: K/C of the work), on the world's device.
    ``topics`` (B, K): the served items' topics, when already known."""
    if topics is None:
        topics = log.candidate_topics.gather(1, log.slates)  # (B, K)
    logits = ctx.policy.score(log.users, log.history, log.items, topics)
    return logits.to(ctx.world.device)


def train_supervised(ctx: TrainContext, log: Requests) -> None:
    """``epochs`` passes over the logged impressions of ``log`` in random minibatches."""
    data = logged_data(log, ctx.regime.reward)
    ctx.stats.add_slates(data.rewards)
    # The fields a step reads, indexed per minibatch (cheaper than selecting whole log rows).
    # Topics of the served candidates only: the log's (R, C) candidate_topics would be
    # hundreds of MB for a day of a million users.
    topics = log.item_topic[log.candidates.gather(1, log.slates)]  # (R, K)
    served = ServedImpressions(log.users, log.history, log.items, topics, log.clicks)
    for _ in range(ctx.regime.epochs):
        for idx in minibatches(len(log), ctx.batch_size, ctx.gen):
            batch = served.select(idx)
            loss = bce_loss(served_logits(ctx, batch, batch.topics), batch.clicks)  # (b, K)
            ctx.policy.step(loss)
            ctx.stats.add_update(loss)


@dataclass
class ServedImpressions:
    """What a BCE step reads of logged requests: users (R,), history (R, H), served items
    (R, K), their topics (R, K) and clicks (R, K)."""

    users: torch.Tensor
    history: torch.Tensor
    items: torch.Tensor
    topics: torch.Tensor
    clicks: torch.Tensor

    def select(self, idx: torch.Tensor) -> ServedImpressions:
        return ServedImpressions(*(getattr(self, f.name)[idx] for f in fields(self)))
