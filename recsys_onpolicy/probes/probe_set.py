"""The fixed probe set: per cohort, users, their candidates and a uniform-random probe slate,
drawn once (at experiment day 0) from the probes' own generator.

Every probe that needs requests reads this set, so a probe value on day t differs from day 0
only because the model and the world changed, never because other users or candidates were
drawn. Two runs with the same seed (different regimes, or a run and its paired control) draw the
same set, because the world at day 0 is the same and the generator is the probes' own.

How the set meets the world's dynamics (decided here, used by every probe):

- fixed for good: the users, their C candidates (drawn from the world's retrieval mix at day 0)
  and the uniform-random probe slate over those candidates; the seeds of the label noise and of
  the slate sampling (so the same random numbers are reused every day: common random numbers);
- read from the world on the day of the probe: each user's click history (the model's input, as
  the user would send it today) and the ground truth (true click probabilities under today's
  interests, fatigue and choice model). A probe value therefore tracks the model *and* the users
  as they are now; the paired control run separates the two.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys_onpolicy.regimes.data import score
from simulators.candidates import build_index
from simulators.day import Requests, make_requests
from simulators.ground_truth import take_rows
from simulators.policies import uniform_random_policy
from simulators.rng import check_generator
from simulators.world import World


@dataclass
class ProbeSet:
    """P probe requests grouped by cohort (rows of a cohort are contiguous)."""

    users: torch.Tensor  # (P,) long user ids, distinct
    cohort: torch.Tensor  # (P,) long cohort of each user
    candidates: torch.Tensor  # (P, C) long item ids
    slates: torch.Tensor  # (P, K) long positions into candidates: the uniform probe slate
    label_seed: int  # seed of the fixed label noise of the AUC probe
    sample_seed: int  # seed of the fixed Gumbel noise of slate sampling (expected clicks, KL)

    def __len__(self) -> int:
        return self.users.shape[0]

    @property
    def items(self) -> torch.Tensor:
        """Item ids of the probe slates, (P, K)."""
        return self.candidates.gather(1, self.slates)

    def rows_of(self, cohorts: list[int] | tuple[int, ...]) -> torch.Tensor:
        """(P,) bool: the probe requests of the given cohorts."""
        return torch.isin(self.cohort, torch.as_tensor(list(cohorts), dtype=torch.long,
                                                      device=self.cohort.device))

    def requests(self, world: World, rows: slice | torch.Tensor = slice(None)) -> Requests:
        """The probe requests (or a slice of them) as a policy sees them on the world's current
        day: fixed users and candidates, today's click history."""
        users, cand = self.users[rows], self.candidates[rows]
        return Requests(
            day=world.day, request_id=torch.arange(users.shape[0], device=users.device),
            users=users, cohort=self.cohort[rows], history=take_rows(world.users.history, users),
            candidates=cand, item_topic=world.items.topic,
        )

    def state_dict(self) -> dict:
        """Plain tensors and ints (for checkpoints, ``torch.load(weights_only=True)``)."""
        return {"users": self.users.cpu(), "cohort": self.cohort.cpu(),
                "candidates": self.candidates.cpu(), "slates": self.slates.cpu(),
                "label_seed": self.label_seed, "sample_seed": self.sample_seed}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str) -> ProbeSet:
        t = {k: state[k].to(device) for k in ("users", "cohort", "candidates", "slates")}
        return cls(**t, label_seed=int(state["label_seed"]), sample_seed=int(state["sample_seed"]))


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def make_probe_set(world: World, users_per_cohort: int, gen: torch.Generator) -> ProbeSet:
    """Draw the probe set from the world as it is now (call at experiment day 0).

    Per cohort: min(users_per_cohort, cohort size) distinct users uniformly at random; one
    request each with C candidates from the world's retrieval mix (a retrieval index built from
    ``gen``, so the world's own cache and generators are untouched); a uniform-random slate of K
    distinct candidates (:func:`simulators.policies.uniform_random_policy`). ``gen`` must live
    on the world's device and be the probes' own stream. Users who have left (``active`` False)
    can be drawn too: their ground truth is still defined, and the probe measures the model's
    ranking of a cohort's tastes, not the cohort's traffic.
    """
    check_generator(gen, world.device)
    if users_per_cohort < 1:
        raise ValueError(f"users_per_cohort = {users_per_cohort}: must be >= 1")
    picked = []
    for k in range(world.n_cohorts):
        members = torch.nonzero(world.users.cohort == k).squeeze(1)  # (U_k,)
        order = torch.randperm(members.shape[0], generator=gen, device=world.device)
        picked.append(members[order[:users_per_cohort]])
    users = torch.cat(picked)  # (P,)
    index = build_index(world, gen)
    req = make_requests(world, users, gen, index=index)
    slates, _ = uniform_random_policy(world.cfg.slate_size, gen)(req)  # (P, K)
    return ProbeSet(users=users, cohort=req.cohort, candidates=req.candidates, slates=slates,
                    label_seed=_seed(gen), sample_seed=_seed(gen))


@torch.no_grad()
def score_probes(model, probe: ProbeSet, world: World, batch_size: int = 4096) -> torch.Tensor:
    """Scores (P, C) of a :class:`~recsys_onpolicy.model.TrainableScorer`, a plain ``Scorer``
    or any object :func:`recsys_onpolicy.regimes.data.score` accepts, on the world's device,
    ``batch_size`` requests per call."""
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be >= 1")
    parts = [score(model, probe.requests(world, slice(i, i + batch_size)), world.device)
             for i in range(0, len(probe), batch_size)]
    return torch.cat(parts).float()
