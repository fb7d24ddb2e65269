"""The target metric (expected clicks per slate of the served policy), Gain and Drop.

Definitions (``../shared/ARCHITECTURE.md``, "Probes"): Gain = the target metric now minus at
day 0 on the cohorts being trained on; Drop = the same metric's fall on the held-out cohorts
(day 0 minus now).

Which slates: the policy's *served distribution*. For each fixed probe request (users and
candidates of the :class:`ProbeSet`, today's history) we sample ``n`` slates from the
Plackett-Luce policy over the model's scores at the serving temperature and average their
expected clicks under today's ground truth (``simulators.ground_truth.expected_clicks``, exact
for each slate; only the slate draw is Monte Carlo). The Gumbel noise comes from a generator
re-seeded with the probe set's ``sample_seed`` on every call (common random numbers), so day 0
and day t differ through the policy and the world, not the draw. A group's value is the mean
over its probe requests, each cohort weighted by its number of probe users.
"""
from __future__ import annotations

import torch

from recsys_onpolicy.slate_policy import sample_groups
from simulators.ground_truth import expected_clicks
from simulators.world import World


@torch.no_grad()
def served_expected_clicks(
    world: World, users: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor,
    temperature: float, n_samples: int, gen: torch.Generator,
) -> torch.Tensor:
    """Expected clicks of the served policy per request, (B,).

    Args:
        world: ground truth (not changed).
        users: (B,) user ids; candidates: (B, C) item ids; scores: (B, C) the policy's scores.
        temperature: the serving temperature of the Plackett-Luce policy.
        n_samples: slates drawn per request (G).
        gen: generator on the world's device for the slate draw.
    Returns:
        (B,) mean over the G sampled slates of their exact expected clicks.
    """
    k = world.cfg.slate_size
    b = users.shape[0]
    slates = sample_groups(scores.to(world.device), k, n_samples, gen, temperature)  # (B, G, K)
    items = candidates.gather(1, slates.reshape(b, -1)).view(b * n_samples, k)  # (B*G, K)
    ec = expected_clicks(world, users.repeat_interleave(n_samples), items)  # (B*G,)
    return ec.view(b, n_samples).mean(dim=1)


def gain_drop(now: dict[str, float], day0: dict[str, float]) -> dict[str, float]:
    """``{"target/gain": now[train] - day0[train], "probe/drop": day0[heldout] - now[heldout]}``
    from expected clicks per group; a metric whose group is missing on either side is left out."""
    out = {}
    if "train" in now and "train" in day0:
        out["target/gain"] = now["train"] - day0["train"]
    if "heldout" in now and "heldout" in day0:
        out["probe/drop"] = day0["heldout"] - now["heldout"]
    return out
