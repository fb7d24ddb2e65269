"""What every regime's update procedure receives (:class:`TrainContext`) and what it reports
(:class:`TrainStats`): the policy being trained, the frozen base policy, the world that answers
slates, one generator for every random draw of training, and running sums of loss and reward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from recsys_onpolicy.regimes.config import RegimeConfig

if TYPE_CHECKING:  # imported for type hints only: keeps this module light
    from recsys_onpolicy.model import Scorer, TrainableScorer
    from simulators.world import World


@dataclass
class TrainStats:
    """Running sums over a day's updates; :meth:`means` gives the ``train/...`` values.

    Sums of tensors stay on the device until :meth:`means` (no host sync per update on CUDA)."""

    loss_sum: torch.Tensor | float = 0.0
    updates: int = 0
    reward_sum: torch.Tensor | float = 0.0
    slates: int = 0
    kept: torch.Tensor | int = 0
    kl_sum: torch.Tensor | float = 0.0
    kl_updates: int = 0

    def add_update(self, loss: torch.Tensor, kl: torch.Tensor | None = None) -> None:
        self.loss_sum = self.loss_sum + loss.detach()
        if kl is not None:
            self.kl_sum = self.kl_sum + kl.detach()
            self.kl_updates += 1
        self.updates += 1

    def add_slates(self, rewards: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """rewards: any shape, one value per training slate; keep: same shape bool (filter)."""
        self.reward_sum = self.reward_sum + rewards.detach().sum()
        self.slates += rewards.numel()
        self.kept = self.kept + (rewards.numel() if keep is None else keep.sum())

    def means(self) -> dict[str, float]:
        """Mean loss per update, mean reward per training slate, share of slates kept, mean KL
        estimate per update (nan where nothing was measured)."""
        nan = float("nan")
        return {
            "loss": float(self.loss_sum) / self.updates if self.updates else nan,
            "reward": float(self.reward_sum) / self.slates if self.slates else nan,
            "kept": float(self.kept) / self.slates if self.slates else nan,
            "kl": float(self.kl_sum) / self.kl_updates if self.kl_updates else nan,
            "updates": float(self.updates),
        }


@dataclass
class TrainContext:
    """Everything a regime needs to update the policy on a set of requests.

    Attributes:
        regime: the validated regime.
        policy: the scorer being trained (its Plackett-Luce policy over scores is the policy).
        reference: the frozen base policy pi_0 (KL penalty, ``data: initial``).
        world: the simulator state that answers slates (rewards, oracle slates).
        gen: generator on the world's device for every draw of training (slate sampling,
            simulated clicks, minibatch order).
        temperature: Plackett-Luce temperature of the trained policy.
        batch_size: requests per update.
        companion: for ``data: traces``, the context of the RL learner whose samples are the
            traces (same world, reference and generator; its own policy and stats).
        stats: running sums of the day.
    """

    regime: RegimeConfig
    policy: TrainableScorer
    reference: Scorer
    world: World
    gen: torch.Generator
    temperature: float
    batch_size: int
    companion: TrainContext | None = None
    stats: TrainStats = field(default_factory=TrainStats)

    @property
    def slate_size(self) -> int:
        return self.world.cfg.slate_size

    def policy_scores(self, requests) -> torch.Tensor:
        """The trained policy's scores (B, C) on the world's device, with grad (call under
        ``torch.no_grad()`` to sample only). Regimes work on the world's device, so a model on
        another device still works (at the cost of one copy per batch)."""
        return self.policy.score_requests(requests).to(self.world.device)
