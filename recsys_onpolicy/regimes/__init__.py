"""Training regimes: data x loss x filter x reuse x KL, one file per loss family.

- :mod:`.config`: :class:`RegimeConfig`, the named :data:`PRESETS`, :func:`resolve_regime`.
- :mod:`.data`: where training slates come from (logged, initial, fresh, teacher, traces).
- :mod:`.supervised`: pointwise click BCE on logged impressions (``supervised_daily``).
- :mod:`.sft`: Plackett-Luce NLL on kept slates (teacher / self / iterative SFT, RL traces).
- :mod:`.policy_gradient`: REINFORCE, GRPO (+KL), PPO on fresh samples of the current policy.

:func:`train_on` sends a set of requests to the regime's update procedure; the daily loop
(:mod:`recsys_onpolicy.loop`) decides *when* (after the day, or after every served batch).
"""
from __future__ import annotations

from recsys_onpolicy.regimes.config import PRESETS, RegimeConfig, expand_preset, resolve_regime
from recsys_onpolicy.regimes.context import TrainContext, TrainStats
from recsys_onpolicy.regimes.policy_gradient import train_policy_gradient
from recsys_onpolicy.regimes.sft import train_sft
from recsys_onpolicy.regimes.supervised import train_supervised

__all__ = [
    "PRESETS", "RegimeConfig", "TrainContext", "TrainStats", "expand_preset", "resolve_regime",
    "train_on",
]


def train_on(ctx: TrainContext, requests) -> None:
    """Update ``ctx.policy`` on ``requests`` (a DayLog or a slice of one) with the regime's
    loss; statistics accumulate in ``ctx.stats``. No requests: nothing happens."""
    if len(requests) == 0:
        return
    loss = ctx.regime.loss
    if loss == "bce":
        train_supervised(ctx, requests)
    elif loss == "nll":
        train_sft(ctx, requests)
    else:
        train_policy_gradient(ctx, requests)
