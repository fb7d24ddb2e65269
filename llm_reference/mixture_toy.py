"""The paper's Gaussian-mixture toy: forward KL ("SFT") vs reverse KL ("RL") on a 1-D mixture.

"Retaining by Doing" (Chen et al. 2025, arXiv 2510.18874, Sec. 4) models an LM as a mixture of an
*old* mode (prior knowledge) and a *new* mode (the target task). The ideal post-trained model is
the target p* = 0.75 N(-3, 1) + 0.25 N(3.5, 0.7). Training only ever sees the new task:

- forward KL / SFT: maximum likelihood on samples of the target's new mode (off-policy data);
- reverse KL / RL: on-policy REINFORCE, samples from the current policy (from its new component
  only, by default), reward = log density ratio of the target's new mode to the policy's
  weighted new component (what this estimator is, and is not: see below).

With a bi-modal initial policy q = 0.75 N(-3.5, 1) + 0.25 N(0.5, 0.7) reverse KL moves the new
component and leaves the old one (it forgets less); with a uni-modal q = N(-3.5, 1) the
mode-covering forward KL keeps more of the old mode. Forgetting is measured by the *overlap* of a
policy component with the matching target mode on a grid (exact definitions in :func:`overlap`
and :func:`probe_values`); runs stop when Gain first reaches ``gain_stop`` (0.9).

Two forgetting measures. ``probe/drop`` (the official one) is the fall from step 0 of the old
*component*'s overlap with the weighted old target mode; it floors at the old weight's clip
(1e-3), so every run that collapses that weight reads Drop ~0.80. ``probe/drop_total`` is the
fall of ``probe/overlap_old_total`` = overlap(w*_0 N_0, q), the *whole* policy against the
weighted old target mode: mass of any component on the old mode counts, which is closer to
"old-task accuracy" in an LM. For a uni-modal q the two are equal.

Which component is "old" / "new": component 0 of q is the old one, the last the new one,
matched to target components 0 (old, left) and 1 (new, right), each weighted by its mixture
weight, as in the official code. A uni-modal q has one component that serves as both: the whole
q is compared with each weighted target mode (the official single-mode code does the same), so
its Gain can reach 1 only by moving the whole policy onto the new mode.

How this differs from the paper's official code (princeton-pli/retaining-by-doing, simulation/)
- Defaults follow the official code where it is more specific than the paper or the issue:
  the weight and std themselves are the parameters (``parametrization='direct'``; after each step
  weights are clipped to [1e-3, 1 - 1e-3] and stds to >= 1e-3), plain SGD on the mean gradient,
  and the official reverse-KL estimator (``reverse_target='new_mode'``, described below) with
  reward log(p_new(x) / (beta q_new(x))).
  ``parametrization='unconstrained'`` (means, log-stds, one mixture logit),
  ``beta_placement='scale'`` (reward beta * log(p/q)) and ``reverse_target='mixture'`` (samples
  from the whole q, reward log p*(x)/q(x): textbook reverse KL to p*) are the other readings.
- Gradients come from autograd through :func:`recsys_onpolicy.objectives.sequence_nll` and
  ``reinforce_loss`` instead of hand-written formulas (same values; tests check this).
- Float64, one explicit torch.Generator; each run's samples come from a seed derived from the
  run's (init, objective, lr), so the ``old_mode_lr_factor`` ablation sees the same target
  samples. The official code uses numpy's global seed 0.
- Training stops at the first step with Gain >= ``gain_stop`` (the official code trains all
  steps and truncates the curves there: same reported values). A run whose parameters become
  non-finite stops and is marked ``train/diverged`` = 1.
- The grid is 500 points on [-8, 8] (bi-modal) and [-10, 10] (uni-modal), as in the official
  settings; integrals are trapezoidal.

What the bi-modal "reverse KL" arm is (``reverse_target='new_mode'``, the official estimator of
princeton-pli/retaining-by-doing ``fit_reinforce``, which this reproduces): REINFORCE without a
baseline on samples of the policy's *new component* only (target-task data), reward
r(x) = log p_new(x) - log(beta q_new(x)) (p_new the normalised target new mode, q_new the
*weighted* policy new component), each sample weighted by q(x) / q_new(x) = 1 + q_old / q_new.
That weight is ~1 on the samples drawn (at q_0: median 1.0007, 94% of 100k draws below 1.1,
the rest from the new component's left tail; ~1 on all of them once that component moves
right), and it does not make this an unbiased estimator of the gradient of KL(q || p_new).
Formally the expected gradient of its loss is -(1 / w_new) * integral of r grad q dx, which
differs from that gradient (q_new where the KL has q, and the factor 1 / w_new). In practice
the runs do not follow even that expectation: what balances it on the old weight and the old
mean / std is the old mode, where the weight is ~2.6e7 at x = -3.5 but a draw of N(0.5, 0.7)
lands below -3.5 with probability 5.5e-9 at q_0. On every realistic batch the old coordinates
see only the new-component region, so the estimator never pushes the old weight down the way
the exact gradient would (what does move it is beta, below). Setting the weight to 1 changes
the default bi-modal reverse run only from Drop 0.032 / 0.032 / 0.037 (stop 129 / 125 / 123)
to 0.026 / 0.025 / 0.025 (stop 135 / 132 / 132), seeds 0 / 1 / 2. The textbook reverse
KL(q || p*) (``reverse_target='mixture'``) does not reach Gain 0.9: Gain 0.12 after 200 steps,
seeds 0-2. So the arm's small Drop comes from sampling target-task data only plus
``old_mode_lr_factor``, not from the mode-seeking property of reverse KL.

beta is not neutral. With ``beta_placement='inside_log'`` it shifts every reward by
-log(beta). A constant reward has zero expected effect only in exact expectation over the
sampled distribution; here the balancing region is the unsampled old mode. On the samples drawn
q_old ~ 0, so d log q / d w_old ~ -1 / w_new and the shift moves the old weight by about
lr * old_mode_lr_factor * log(beta) / w_new per step (down for beta < 1, up for beta > 1).
Measured on the bi-modal reverse run (lr 0.01, factor 0.005, otherwise defaults), seeds
0 / 1 / 2, at the stop step (w_old: the old weight there, 0.75 at step 0):

    beta  stop step        Drop                     drop_total               w_old
    0.01  120 / 111 / 117  0.054 / 0.051 / 0.059    0.074 / 0.071 / 0.079    0.66-0.67
    0.1   129 / 125 / 123  0.032 / 0.032 / 0.037    0.052 / 0.053 / 0.058    0.70
    1     152 / 150 / 147  0.007 / 0.009 / 0.015    0.028 / 0.029 / 0.036    0.74-0.75
    10    200 / 200 / 200  -0.031 / -0.028 / -0.020  -0.010 / -0.008 / 0.000  0.82-0.83

(beta 10: Gain 0.66-0.70, gain_stop not reached.) So "reverse KL forgets less than forward KL"
(forward Drop 0.122 / 0.126 / 0.126 at lr 0.15, same seeds) is a factor 3.4-3.9 at the default
beta 0.1, 2.1-2.5 at beta 0.01 and 8-17 at beta 1.

The bi-modal result rests on these official choices (measured, seeds 0-9 and 0-4): with the
defaults reverse KL forgets about 4x less than forward KL at lr 0.15 by Drop (0.032 vs 0.122,
seed 0), 2.6x less by drop_total (0.052 vs 0.136); with ``old_mode_lr_factor=1`` every bi-modal run loses the old component (Drop 0.80, at
the weight floor) and by drop_total reverse KL then forgets *more* than forward KL (0.82 vs
0.60 at lr 0.15 and 0.68 at lr 0.01, seeds 0-2); with ``parametrization='unconstrained'``
neither objective forgets at factor 0.005 and both forget about equally at factor 1;
``beta_placement='scale'`` and ``reverse_target='mixture'`` never reach Gain 0.9 with reverse
KL in 200 (1000) steps. The uni-modal result (forward KL forgets less) holds under both
parametrizations.
"""
from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path
from typing import Literal

import polars as pl
import torch
from pydantic import Field, model_validator

from recsys_onpolicy.objectives import reinforce_loss, sequence_nll
from recsys_onpolicy.results import metric_rows, to_frame, write_metrics
from simulators.typed_config import ConfigError, StrictModel, read_yaml, replace, validate

DTYPE = torch.float64
WEIGHT_FLOOR = 1e-3  # the official code clips the old weight to [1e-3, 1 - 1e-3]
STD_FLOOR = 1e-3  # and every std to >= 1e-3 (direct parametrization only)
INITS = ("bimodal", "unimodal")
EXPERIMENT = "mixture_toy"


# ----------------------------------------------------------------------------------- config
class Component(StrictModel):
    """One weighted Gaussian w * N(mean, std^2)."""

    weight: float = Field(gt=0, le=1)
    """Mixture weight; the weights of a mixture must sum to 1."""
    mean: float
    """Mean of the Gaussian."""
    std: float = Field(gt=0)
    """Standard deviation of the Gaussian."""


def _check_weights(components: list[Component], where: str) -> None:
    total = sum(c.weight for c in components)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{where}: mixture weights sum to {total:g}, they must sum to 1")


class InitCase(StrictModel):
    """An initial policy and the runs started from it."""

    components: list[Component]
    """The initial policy q_0: 1 component (uni-modal) or 2 (old first, new last)."""
    forward_lrs: list[float] = Field(default_factory=list)
    """Learning rates of the forward-KL (SFT) runs, one run each."""
    reverse_lrs: list[float] = Field(default_factory=list)
    """Learning rates of the reverse-KL (REINFORCE) runs, one run each."""
    steps: int = Field(ge=1, le=100_000)
    """Maximum gradient steps per run (a run stops earlier when Gain reaches gain_stop)."""
    grid_min: float
    """Left end of the grid on which overlaps and KL are integrated."""
    grid_max: float
    """Right end of that grid."""

    @model_validator(mode="after")
    def _check(self) -> InitCase:
        if len(self.components) not in (1, 2):
            raise ValueError(
                f"components: {len(self.components)} given; use 1 (uni-modal) or 2 (old, new)"
            )
        _check_weights(self.components, "components")
        for name in ("forward_lrs", "reverse_lrs"):
            bad = [lr for lr in getattr(self, name) if not (lr > 0 and math.isfinite(lr))]
            if bad:
                raise ValueError(f"{name} = {bad}: learning rates must be finite and > 0")
        if not self.grid_min < self.grid_max:
            raise ValueError(f"grid_min = {self.grid_min} must be < grid_max = {self.grid_max}")
        return self


class MixtureToyConfig(StrictModel):
    """The Gaussian-mixture toy; defaults are the paper's (official code's) settings."""

    target: list[Component] = Field(
        default_factory=lambda: [Component(weight=0.75, mean=-3.0, std=1.0),
                                 Component(weight=0.25, mean=3.5, std=0.7)]
    )
    """The ideal distribution p*: exactly 2 components, the old mode first, the new mode last."""
    inits: list[Literal["bimodal", "unimodal"]] = Field(default_factory=lambda: list(INITS))
    """Which initial policies to run (each is configured by the section of that name)."""
    bimodal: InitCase = Field(default_factory=lambda: InitCase(
        components=[Component(weight=0.75, mean=-3.5, std=1.0),
                    Component(weight=0.25, mean=0.5, std=0.7)],
        forward_lrs=[0.15, 0.01], reverse_lrs=[0.01], steps=200, grid_min=-8.0, grid_max=8.0))
    """Bi-modal q_0 = 0.75 N(-3.5, 1) + 0.25 N(0.5, 0.7); lrs 0.15, 0.01 (fwd), 0.01 (rev)."""
    unimodal: InitCase = Field(default_factory=lambda: InitCase(
        components=[Component(weight=1.0, mean=-3.5, std=1.0)],
        forward_lrs=[0.05], reverse_lrs=[0.005], steps=1000, grid_min=-10.0, grid_max=10.0))
    """Uni-modal q_0 = N(-3.5, 1); lrs 0.05 (fwd), 0.005 (rev), 1000 steps."""
    samples_per_step: int = Field(default=1000, ge=1, le=10_000_000)
    """Samples per gradient step (target new-mode draws for SFT, policy draws for RL)."""
    beta: float = Field(default=0.1, gt=0)
    """The reward's beta (see beta_placement). Not neutral with reverse_target='new_mode': its
    -log(beta) reward shift moves the old weight (measured table in the module docstring)."""
    beta_placement: Literal["inside_log", "scale"] = "inside_log"
    """'inside_log': r = log(p / (beta q)) as in the official code (beta shifts every reward by
    -log(beta), which moves the old weight with new-component sampling); 'scale':
    r = beta * log(p / q) (not just a smaller RL learning rate: it also removes that shift;
    the bi-modal reverse run then reaches only Gain ~0.12 in 200 steps)."""
    reverse_target: Literal["new_mode", "mixture"] = "new_mode"
    """'new_mode' (official): REINFORCE on x ~ the policy's new component only, reward
    log p_new(x) / (beta q_new(x)) (p_new normalised, q_new weighted), weight q/q_new (~1 on the
    drawn samples; not an unbiased estimator of grad KL(q || p_new), see the module docstring).
    'mixture': x ~ q, reward from log p*(x) / q(x), i.e. the textbook reverse KL(q || p*)."""
    parametrization: Literal["direct", "unconstrained"] = "direct"
    """'direct' (official): the old weight and the stds are the parameters, clipped after each
    step; 'unconstrained': means, log-stds and one logit log(w_old / w_new)."""
    old_mode_lr_factor: float = Field(default=0.005, ge=0, le=1)
    """Multiplies the gradient of the old component's parameters (mean, std, weight), as the
    official code's SLOW_FACTOR. No effect on a one-component policy."""
    old_mode_lr_factor_ablation: float | None = Field(default=1.0, ge=0, le=1)
    """A second old_mode_lr_factor run for every two-component init to show the factor's effect;
    null to skip."""
    gain_stop: float = Field(default=0.9, gt=0, le=1)
    """A run stops at the first step whose Gain (new-mode overlap rise) reaches this value."""
    grid_points: int = Field(default=500, ge=10, le=1_000_000)
    """Number of grid points for the overlap and KL integrals (trapezoidal rule)."""
    device: str = "cpu"
    """Torch device for all tensors ('cpu', 'cuda', 'cuda:1')."""
    seed: int = Field(default=0, ge=0)
    """Seed of the generator made by main(); run_mixture_toy uses the generator it is given."""

    @model_validator(mode="after")
    def _check(self) -> MixtureToyConfig:
        if len(self.target) != 2:
            raise ValueError(f"target: {len(self.target)} components; give exactly 2 (old, new)")
        _check_weights(self.target, "target")
        for init in self.inits:
            case: InitCase = getattr(self, init)
            for k, c in enumerate(self.target):
                if not case.grid_min <= c.mean - 3 * c.std < c.mean + 3 * c.std <= case.grid_max:
                    raise ValueError(
                        f"{init}: the grid [{case.grid_min}, {case.grid_max}] does not cover "
                        f"target component {k} (mean +- 3 std); widen grid_min/grid_max"
                    )
        if len(set(self.inits)) != len(self.inits):
            raise ValueError(f"inits = {self.inits}: each init may appear once")
        return self


class MixtureToyFile(StrictModel):
    """A config file for this experiment (configs/llm/mixture_toy.yaml)."""

    domain: Literal["llm"]
    """Always 'llm'."""
    experiment: Literal["mixture_toy"]
    """Always 'mixture_toy'."""
    mixture_toy: MixtureToyConfig = Field(default_factory=MixtureToyConfig)
    """The experiment's settings."""


def load_mixture_config(path: str | Path) -> MixtureToyConfig:
    """Read and validate a mixture-toy YAML file; raises ConfigError naming the bad field."""
    return validate(MixtureToyFile, read_yaml(path), source=f"{path}: ").mixture_toy


# ---------------------------------------------------------------------- densities, metrics
def component_log_probs(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                        stds: torch.Tensor) -> torch.Tensor:
    """log(w_k N(x; mean_k, std_k^2)) for x (N,) and K components -> (N, K)."""
    z = (x[:, None] - means[None]) / stds[None]  # (N, K)
    return (torch.log(weights)[None] - 0.5 * z.pow(2) - torch.log(stds)[None]
            - 0.5 * math.log(2 * math.pi))


def overlap(p_vals: torch.Tensor, q_vals: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Overlap of q with p: integral of min(p, q) / integral of p (trapezoid on ``grid``).

    Args:
        p_vals, q_vals: (G,) densities (may be weighted, i.e. not integrate to 1) on the grid.
        grid: (G,) increasing points.
    Returns: a scalar in [0, 1] when q >= p everywhere gives 1.
    """
    return torch.trapezoid(torch.minimum(p_vals, q_vals), grid) / torch.trapezoid(p_vals, grid)


def grid_kl(log_p: torch.Tensor, log_q: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = integral of p (log p - log q) on the grid, from (G,) log densities."""
    return torch.trapezoid(log_p.exp() * (log_p - log_q), grid)


def gain_and_drop(overlap_old: torch.Tensor, overlap_new: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) overlaps from step 0 on -> Gain (T,) = new - new[0], Drop (T,) = old[0] - old."""
    return overlap_new - overlap_new[0], overlap_old[0] - overlap_old


def first_step_reaching(gain: torch.Tensor, threshold: float) -> int | None:
    """The first index t with gain[t] >= threshold, or None if it is never reached."""
    hit = torch.nonzero(gain >= threshold)
    return int(hit[0, 0]) if len(hit) else None


# ---------------------------------------------------------------------------------- policy
class MixturePolicy:
    """q(x) = sum_k w_k N(x; mean_k, std_k^2) with K = 1 or 2 trainable components.

    Component 0 is the old one, the last (K-1) the new one. Parameters: ``means`` (K,),
    ``spread`` (K,) = stds ('direct') or log-stds ('unconstrained'), ``mix`` (K-1,) = the old
    weight ('direct') or logit log(w_old / w_new) ('unconstrained').
    """

    def __init__(self, components: list[Component], parametrization: str, device: str):
        self.direct = parametrization == "direct"
        self.K = len(components)
        w = torch.tensor([c.weight for c in components], dtype=DTYPE, device=device)
        std = torch.tensor([c.std for c in components], dtype=DTYPE, device=device)
        self.means = torch.tensor([c.mean for c in components], dtype=DTYPE, device=device)
        self.spread = std if self.direct else std.log()
        self.mix = w[:-1].clone() if self.direct else (w[:-1] / w[-1]).log()
        for p in self.parameters():
            p.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.means, self.spread, self.mix]

    def weights(self) -> torch.Tensor:
        """(K,) mixture weights."""
        if self.K == 1:
            return torch.ones_like(self.means)
        w_old = self.mix if self.direct else torch.sigmoid(self.mix)  # (1,)
        return torch.cat([w_old, 1 - w_old])

    def stds(self) -> torch.Tensor:
        """(K,) standard deviations."""
        return self.spread if self.direct else self.spread.exp()

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, K) log of the weighted component densities."""
        return component_log_probs(x, self.weights(), self.means, self.stds())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N,) log q(x)."""
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def sample_component(self, k: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) draws from component k alone (no gradient)."""
        eps = torch.randn(n, generator=gen, dtype=DTYPE, device=self.means.device)
        return (self.means[k] + self.stds()[k] * eps).detach()

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) draws from q (no gradient)."""
        with torch.no_grad():
            k = torch.multinomial(self.weights(), n, replacement=True, generator=gen)  # (n,)
            eps = torch.randn(n, generator=gen, dtype=DTYPE, device=self.means.device)
            return self.means[k] + self.stds()[k] * eps

    @torch.no_grad()
    def sgd_step(self, lr: float, old_factor: float) -> None:
        """p -= lr * grad, the old component's gradients times ``old_factor``; then clip."""
        scale = torch.ones_like(self.means)
        scale[: self.K - 1] = old_factor  # every component but the last (new) one is "old"
        for p, s in ((self.means, scale), (self.spread, scale), (self.mix, old_factor)):
            if p.grad is not None:
                p -= lr * p.grad * s
                p.grad = None
        if self.direct:
            self.spread.clamp_(min=STD_FLOOR)
            self.mix.clamp_(WEIGHT_FLOOR, 1 - WEIGHT_FLOOR)

    @torch.no_grad()
    def is_finite(self) -> bool:
        """True while means, stds and weights are finite and every std is > 0."""
        stds = self.stds()
        return bool(all(torch.isfinite(v).all() for v in (self.means, stds, self.weights()))
                    and (stds > 0).all())


class TargetMixture:
    """The fixed target p* (component 0 = old mode, 1 = new mode)."""

    def __init__(self, components: list[Component], device: str):
        def t(v):
            return torch.tensor(v, dtype=DTYPE, device=device)
        self.weights = t([c.weight for c in components])
        self.means = t([c.mean for c in components])
        self.stds = t([c.std for c in components])

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, 2) log of the weighted component densities."""
        return component_log_probs(x, self.weights, self.means, self.stds)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N,) log p*(x)."""
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def new_mode_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N,) log p_new(x), the new mode as a normalised density."""
        return self.component_log_probs(x)[:, 1] - torch.log(self.weights[1])

    def sample_new_mode(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) draws from the new mode: the SFT data."""
        eps = torch.randn(n, generator=gen, dtype=DTYPE, device=self.means.device)
        return self.means[1] + self.stds[1] * eps


# ---------------------------------------------------------------------------------- losses
def forward_kl_loss(policy: MixturePolicy, target: TargetMixture, n: int,
                    gen: torch.Generator) -> torch.Tensor:
    """SFT: mean negative log-likelihood of n samples of the target's new mode."""
    x = target.sample_new_mode(n, gen)  # (N,)
    return sequence_nll(policy.log_prob(x))


def reverse_kl_loss(policy: MixturePolicy, target: TargetMixture, cfg: MixtureToyConfig,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RL: REINFORCE (no baseline) on fresh policy samples; returns (loss, mean reward).

    'new_mode': x ~ the new component, loss -mean(w(x) r(x) log q(x)) with w = q / q_new
    (weighted q_new). Its gradient's expectation is -(1 / w_new) * integral of r grad q dx, but
    the old mode, which balances that expectation on the old coordinates, is in practice never
    sampled (module docstring). 'mixture': x ~ q, an unbiased estimate of grad KL(q || p*)
    (times beta with beta_placement='scale').
    """
    n = cfg.samples_per_step
    with torch.no_grad():
        if cfg.reverse_target == "new_mode":
            x = policy.sample_component(policy.K - 1, n, gen)  # (N,) from q's new component
            log_q_new = policy.component_log_probs(x)[:, -1]  # (N,) weighted
            log_iw = policy.log_prob(x) - log_q_new  # (N,) importance weight q / q_new
            log_ratio = target.new_mode_log_prob(x) - log_q_new
        else:
            x = policy.sample(n, gen)  # (N,) from q
            log_iw = torch.zeros_like(x)
            log_ratio = target.log_prob(x) - policy.log_prob(x)
        if cfg.beta_placement == "inside_log":
            reward = log_ratio - math.log(cfg.beta)
        else:
            reward = cfg.beta * log_ratio
    return reinforce_loss(policy.log_prob(x), reward * log_iw.exp()), reward.mean()


# ---------------------------------------------------------------------------------- probes
@torch.no_grad()
def probe_values(policy: MixturePolicy, p_vals: torch.Tensor, log_q0: torch.Tensor,
                 grid: torch.Tensor) -> dict[str, float]:
    """One step's probes and parameters (the per-step rows of :func:`run_case`).

    Args:
        policy: the policy q_t.
        p_vals: (G, 2) weighted target modes w*_k N_k on the grid (old first).
        log_q0: (G,) log q_0 on the grid.
        grid: (G,) increasing points.
    Returns: probe/overlap_old = overlap(w*_0 N_0, q_old), probe/overlap_new =
    overlap(w*_1 N_1, q_new) (q_old, q_new the weighted first / last policy component, the
    whole q when K = 1), probe/overlap_old_total = overlap(w*_0 N_0, q) (the whole policy),
    probe/kl_to_base = KL(q_0 || q_t), and train/mean_k, train/std_k, train/weight_k.
    """
    q_vals = policy.component_log_probs(grid).exp()  # (G, K); K = 1: column 0 is all of q
    w, m, s = policy.weights(), policy.means, policy.stds()
    out = {"probe/overlap_old": float(overlap(p_vals[:, 0], q_vals[:, 0], grid)),
           "probe/overlap_new": float(overlap(p_vals[:, 1], q_vals[:, -1], grid)),
           "probe/overlap_old_total": float(overlap(p_vals[:, 0], q_vals.sum(1), grid)),
           "probe/kl_to_base": float(grid_kl(log_q0, policy.log_prob(grid), grid))}
    for k in range(policy.K):
        out |= {f"train/mean_{k}": float(m[k]), f"train/std_{k}": float(s[k]),
                f"train/weight_{k}": float(w[k])}
    return out


# ------------------------------------------------------------------------------------ runs
def regime_name(objective: str, lr: float, old_factor: float | None) -> str:
    """'forward_kl_lr0.15_oldf0.005'; no '_oldf' part for one-component policies."""
    name = f"{objective}_lr{lr:g}"
    return name if old_factor is None else f"{name}_oldf{old_factor:g}"


def run_seed(base: int, init: str, objective: str, lr: float) -> int:
    """A run's seed: the base seed plus a stable hash of (init, objective, lr)."""
    return (base + zlib.crc32(f"{init}/{objective}/{lr!r}".encode())) % (2**62)


def run_case(cfg: MixtureToyConfig, init: str, objective: Literal["forward_kl", "reverse_kl"],
             lr: float, old_factor: float, gen: torch.Generator, seed: int = 0) -> list[dict]:
    """Train one policy from ``init`` and return its rows in the result schema.

    Every step t (0 = before training) logs, with G grid points on [grid_min, grid_max], the
    probes of :func:`probe_values` (overlap_old, overlap_new, overlap_old_total, kl_to_base, the
    parameters) and target/gain = overlap_new(t) - overlap_new(0), probe/drop =
    overlap_old(0) - overlap_old(t) (the old *component*), probe/drop_total =
    overlap_old_total(0) - overlap_old_total(t) (the whole policy), train/loss (the surrogate
    being minimised), train/reward_mean (RL only). The last step also carries target/reached
    (1 if Gain >= gain_stop), target/stop_step and train/diverged.
    """
    case: InitCase = getattr(cfg, init)
    policy = MixturePolicy(case.components, cfg.parametrization, cfg.device)
    target = TargetMixture(cfg.target, cfg.device)
    grid = torch.linspace(case.grid_min, case.grid_max, cfg.grid_points, dtype=DTYPE,
                          device=cfg.device)  # (G,)
    p_vals = target.component_log_probs(grid).exp()  # (G, 2) weighted target modes
    with torch.no_grad():
        log_q0 = policy.log_prob(grid)  # (G,)
    regime = regime_name(objective, lr, old_factor if policy.K > 1 else None)
    base = {"domain": "llm", "experiment": EXPERIMENT, "regime": regime, "seed": seed,
            "group": init}

    history = [probe_values(policy, p_vals, log_q0, grid)]  # one dict per logged step, 0 first
    diverged = False
    for step in range(1, case.steps + 1):
        # one step: fresh data, loss, plain SGD with the old component slowed down
        stats = {}
        if objective == "forward_kl":
            loss = forward_kl_loss(policy, target, cfg.samples_per_step, gen)
        else:
            loss, reward = reverse_kl_loss(policy, target, cfg, gen)
            stats["train/reward_mean"] = reward.item()
        loss.backward()
        policy.sgd_step(lr, old_factor)
        if not (policy.is_finite() and math.isfinite(loss.item())):
            diverged = True  # stop; the last finite state is the last one logged
            break
        history.append(probe_values(policy, p_vals, log_q0, grid) | stats
                       | {"train/loss": loss.item()})
        if history[-1]["probe/overlap_new"] - history[0]["probe/overlap_new"] >= cfg.gain_stop:
            break

    # bookkeeping: Gain / Drop against step 0, the stop step, the rows
    def series(metric: str) -> torch.Tensor:  # (T,) one metric over the logged steps
        return torch.tensor([h[metric] for h in history], dtype=DTYPE)

    gain, drop = gain_and_drop(series("probe/overlap_old"), series("probe/overlap_new"))
    _, drop_total = gain_and_drop(series("probe/overlap_old_total"), series("probe/overlap_new"))
    stop = first_step_reaching(gain, cfg.gain_stop)
    last = len(history) - 1
    rows = []
    for t, h in enumerate(history):
        values = h | {"target/gain": float(gain[t]), "probe/drop": float(drop[t]),
                      "probe/drop_total": float(drop_total[t])}
        rows += metric_rows(step=t, values=values, **base)
    rows += metric_rows(step=last, values={
        "target/reached": float(stop is not None), "target/stop_step": float(last),
        "train/diverged": float(diverged)}, **base)
    return rows


def run_mixture_toy(cfg: MixtureToyConfig, gen: torch.Generator) -> pl.DataFrame:
    """All runs of the config (inits x objectives x lrs, plus the old-factor ablation).

    Returns the long result frame (domain='llm', experiment='mixture_toy', group = init,
    regime = :func:`regime_name`). ``gen`` gives one base seed; each run draws from its own
    generator seeded by :func:`run_seed`, so a run does not depend on which others are run.
    """
    device = torch.device(cfg.device)
    if gen.device.type != device.type:
        raise ConfigError(f"the generator is on {gen.device} but device = {cfg.device!r}: "
                          f"make it with torch.Generator(device={cfg.device!r})")
    base = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    rows: list[dict] = []
    for init in cfg.inits:
        case: InitCase = getattr(cfg, init)
        factors = [cfg.old_mode_lr_factor]
        if len(case.components) > 1 and cfg.old_mode_lr_factor_ablation is not None:
            factors.append(cfg.old_mode_lr_factor_ablation)
        for factor in dict.fromkeys(factors):  # unique, in order
            for objective, lrs in (("forward_kl", case.forward_lrs),
                                   ("reverse_kl", case.reverse_lrs)):
                for lr in lrs:
                    run_gen = torch.Generator(device=device)
                    run_gen.manual_seed(run_seed(base, init, objective, lr))
                    rows += run_case(cfg, init, objective, lr, factor, run_gen,
                                     seed=gen.initial_seed())
    return to_frame(rows)


# ----------------------------------------------------------------------------------- table
def gain_drop_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per run (init, regime, seed) at that run's own stop step: init, regime, seed,
    stop_step, reached, diverged, gain, drop (old component), drop_total (whole policy), kl."""
    keys = ["group", "regime", "seed"]
    last = frame.group_by(keys, maintain_order=True).agg(pl.col("step").max())
    wide = (frame.join(last, on=[*keys, "step"])
            .pivot(on="metric", index=[*keys, "step"], values="value"))
    return wide.select(
        pl.col("group").alias("init"), "regime", "seed", pl.col("step").alias("stop_step"),
        pl.col("target/reached").cast(pl.Boolean).alias("reached"),
        pl.col("train/diverged").cast(pl.Boolean).alias("diverged"),
        pl.col("target/gain").alias("gain"), pl.col("probe/drop").alias("drop"),
        pl.col("probe/drop_total").alias("drop_total"),
        pl.col("probe/kl_to_base").alias("kl_to_base"),
    )


def format_gain_drop_table(table: pl.DataFrame) -> str:
    """The table as fixed-width text for a terminal or a report (drop: old component; drop_tot:
    whole policy)."""
    head = (f"{'init':<9} {'regime':<30} {'seed':>4} {'stop':>5} {'gain':>6} {'drop':>6} "
            f"{'drop_tot':>8} {'KL(q0||q)':>9}  note")
    lines = [head, "-" * len(head)]
    for r in table.iter_rows(named=True):
        note = "diverged" if r["diverged"] else ("" if r["reached"] else "gain_stop not reached")
        lines.append(f"{r['init']:<9} {r['regime']:<30} {r['seed']:>4d} {r['stop_step']:>5d} "
                     f"{r['gain']:>6.3f} {r['drop']:>6.3f} {r['drop_total']:>8.3f} "
                     f"{r['kl_to_base']:>9.3f}  {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> pl.DataFrame:
    """``python -m llm_reference.mixture_toy [--config F] [--out DIR] [--seed S]``.

    Writes DIR/metrics.parquet, DIR/gain_drop.txt and DIR/densities.png; prints the table.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML file (default: built-in defaults)")
    ap.add_argument("--out", default="runs/mixture_toy", help="output folder")
    ap.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    args = ap.parse_args(argv)
    cfg = load_mixture_config(args.config) if args.config else MixtureToyConfig()
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    gen = torch.Generator(device=cfg.device)
    gen.manual_seed(cfg.seed)
    frame = run_mixture_toy(cfg, gen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(frame, out / "metrics.parquet")
    text = format_gain_drop_table(gain_drop_table(frame))
    (out / "gain_drop.txt").write_text(text + "\n")
    from llm_reference.mixture_plot import plot_mixture_densities

    plot_mixture_densities(frame, cfg, out / "densities.png")
    print(text)
    return frame


if __name__ == "__main__":
    main()
