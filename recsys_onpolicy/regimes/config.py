"""What a training regime is, as a typed config, and the named presets of the research.

A regime is the product of orthogonal choices (``../shared/ARCHITECTURE.md``, "The one idea"):

- data (``data``): ``logged`` (the day's served impressions), ``initial`` (slates sampled from
  the frozen pi_0), ``fresh`` (sampled from the current policy), ``teacher`` (oracle slates of
  the ground truth), ``traces`` (the slates a companion RL learner samples);
- loss (``loss``): ``bce`` (pointwise clicks), ``nll`` (SFT on slates), ``reinforce``,
  ``grpo``, ``ppo``;
- filter (``filter``): ``all`` / ``positive`` (keep slates with reward > 0);
- reuse (``epochs``, ``rounds``, ``cadence``): updates per batch, regenerations per day, daily
  vs streaming;
- KL (``beta``, ``kl_estimator``): penalty coefficient and estimator against the frozen pi_0.

Simulation-only ingredients (say so when you report results): ``teacher`` data and
``group_source: simulator`` both ask the simulator's ground truth about slates nobody was
served (the oracle slate; G different slates for the *same* request). A production system sees
one slate per request: ``group_source: batch`` (one fresh slate per request, the batch mean as
baseline) is the production-realistic variant, and ``data: logged`` is what production trains on.

Use :func:`resolve_regime` to turn a preset name, a mapping (``{preset: grpo, beta: 0.1}`` or a
full custom regime) or a :class:`RegimeConfig` into a validated :class:`RegimeConfig`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recsys_onpolicy.objectives import KLEstimator
from simulators.typed_config import ConfigError, StrictModel, validate

DataSource = Literal["logged", "initial", "fresh", "teacher", "traces"]
LossName = Literal["bce", "nll", "reinforce", "grpo", "ppo"]
POLICY_GRADIENT_LOSSES = ("reinforce", "grpo", "ppo")


class RegimeConfig(StrictModel):
    """One training regime: data x loss x filter x reuse x KL (see the module docstring)."""

    preset: str | None = None
    """Name of the preset these values started from (filled by :func:`resolve_regime`; None for
    a custom regime). Informational: it names the regime in results."""
    data: DataSource = "logged"
    """Where the training slates come from. ``logged``: the day's served impressions and their
    clicks (lagged, off-policy); ``initial``: slates sampled from the frozen base policy pi_0 for
    the day's requests (Self-SFT); ``fresh``: sampled from the current policy (for policy-gradient
    losses at every update, for ``nll`` at the start of every round); ``teacher``: the oracle
    slate of the ground truth (simulation only); ``traces``: slates sampled by a companion RL
    learner (``traces_from``) trained in the same run on the same requests."""
    loss: LossName = "bce"
    """``bce``: pointwise click BCE on the served items (needs ``data: logged``); ``nll``: SFT,
    negative Plackett-Luce log-likelihood of the (kept) slates; ``reinforce``: reward-weighted
    log-likelihood (Williams 1992); ``grpo``: group-normalised advantages (Shao et al. 2024);
    ``ppo``: the same advantages with PPO's clipped ratio (Schulman et al. 2017) and ``epochs``
    updates per sampled batch. Policy-gradient losses need ``data: fresh``."""
    filter: Literal["all", "positive"] = "all"
    """``positive`` keeps only slates with reward > 0 (at least one click): the reward filter of
    Self-SFT / Iterative-SFT; only for ``loss: nll``."""
    epochs: int = Field(default=1, ge=1, le=64)
    """Updates per batch of data: passes over the day's data for ``bce``/``nll``, gradient steps
    on each sampled batch for ``ppo`` (near-on-policy reuse). Policy-gradient losses without the
    clipped ratio (``reinforce``, ``grpo``) need 1."""
    rounds: int = Field(default=1, ge=1, le=1024)
    """Regenerations per day for ``data: fresh`` with ``loss: nll`` (Iterative-SFT): the day's
    training requests are split into ``rounds`` chunks and each chunk's slates are sampled from
    the policy as it is when the chunk starts. Capped at the number of update batches."""
    cadence: Literal["daily", "streaming"] = "daily"
    """``daily``: serve the whole day with yesterday's model, then train on the day;
    ``streaming``: train after every served batch, so the next batch is served by the updated
    policy."""
    beta: float = 0.0
    """KL penalty coefficient of policy-gradient losses: loss += beta * mean of ``kl_estimator``
    on the fresh samples of the current policy against the frozen base policy pi_0. 0 turns it
    off. Which KL its gradient follows depends on the estimator (see ``kl_estimator``)."""
    kl_estimator: KLEstimator = "k3"
    """Estimator of the KL penalty (Schulman's note), r = pi_0(y) / pi(y): ``k3`` = (r - 1) -
    log r (GRPO's choice; as a loss term its expected gradient is that of the forward KL(pi_0 ||
    pi)), ``k2`` = (log r)^2/2 (gradient of the reverse KL(pi || pi_0)). ``k1`` = -log r is
    refused with beta > 0: its expected gradient is zero, so it would not penalise anything. The
    ``kl`` training statistic is the estimator's value, an estimate of KL(pi || pi_0) (k3:
    unbiased)."""
    group_size: int = Field(default=1, ge=1, le=256)
    """G: slates sampled per request (``data: initial | fresh | traces``). GRPO and PPO with
    ``group_source: simulator`` need G >= 2 (the paper uses 5)."""
    group_source: Literal["simulator", "batch"] = "simulator"
    """``simulator``: G slates for the same request, each answered by the simulator (possible
    only in simulation: a real user sees one slate); ``batch``: one slate per request and the
    batch's reward mean (and std, for grpo/ppo) as baseline, the production-realistic variant."""
    baseline: Literal["none", "mean"] = "none"
    """REINFORCE only: ``none`` weights log-probabilities by the raw reward (the paper's
    ablation); ``mean`` subtracts the group mean (G >= 2) or else the batch mean."""
    scale_advantages: bool = True
    """GRPO/PPO: divide centred rewards by the group (or batch) std; False = Dr. GRPO centring."""
    clip: float = Field(default=0.2, gt=0.0, lt=1.0)
    """PPO's clip range epsilon: the ratio is clipped to [1 - clip, 1 + clip]."""
    temperature: float | None = Field(default=None, gt=0.0, le=100.0)
    """Plackett-Luce temperature of the trained policy (sampling and log-probabilities); None =
    the run's serving temperature, so the policy trained is the policy served."""
    reward: Literal["clicks", "expected"] = "clicks"
    """Reward of a slate: ``clicks`` = sampled clicks from the simulator (what a system
    observes); ``expected`` = expected clicks under the ground truth (a variance-reduced,
    simulation-only reward)."""
    traces_from: str | dict[str, Any] = "grpo"
    """For ``data: traces``: the regime of the companion RL learner whose sampled slates are
    the traces: a policy-gradient preset name or a mapping such as ``{preset: grpo, dense_lr:
    0.01}`` (its learning rates are its own, not this regime's)."""
    dense_lr: float | None = Field(default=None, gt=0.0, le=1.0)
    """Adam learning rate of the dense head for this regime; None = the model config's."""
    sparse_lr: float | None = Field(default=None, gt=0.0, le=10.0)
    """Learning rate of the fused sparse optimizer for this regime; None = the model config's."""

    @property
    def name(self) -> str:
        """The preset's name, or 'custom'."""
        return self.preset or "custom"

    @property
    def is_policy_gradient(self) -> bool:
        return self.loss in POLICY_GRADIENT_LOSSES

    def companion(self) -> RegimeConfig:
        """The companion learner's regime (``traces_from``) as a validated config."""
        return RegimeConfig.model_validate(expand_preset(self.traces_from))

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not v >= 0:  # also catches NaN
            raise ValueError(
                f"beta = {v}: the KL coefficient must be >= 0 (0 turns the penalty off, the "
                "paper's GRPO-with-KL uses 0.05)"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> RegimeConfig:
        for problem in _problems(self):
            raise ValueError(problem)
        return self


def _problems(r: RegimeConfig) -> list[str]:
    """Cross-field checks; every message names the field, the value and the fix."""
    out = []
    if r.loss == "bce" and r.data != "logged":
        out.append(f"loss = 'bce' trains on the click labels of served impressions, but data = "
                   f"{r.data!r}: set data: logged, or use loss: nll to imitate {r.data} slates")
    if r.is_policy_gradient and r.data != "fresh":
        out.append(f"loss = {r.loss!r} is a policy-gradient loss and needs samples of the current "
                   f"policy, but data = {r.data!r}: set data: fresh (off-policy data goes with "
                   "loss: nll or bce)")
    if r.filter == "positive" and r.loss != "nll":
        out.append(f"filter = 'positive' keeps slates for SFT and applies to loss: nll only, not "
                   f"loss = {r.loss!r}: set filter: all")
    if r.filter == "positive" and r.reward == "expected":
        out.append("filter = 'positive' keeps slates with at least one click, but with reward = "
                   "'expected' every slate has reward > 0: set reward: clicks or filter: all")
    if r.group_source == "batch" and r.group_size != 1:
        out.append(f"group_size = {r.group_size} with group_source = 'batch': the batch variant "
                   "draws one slate per request; set group_size: 1 or group_source: simulator")
    if r.loss in ("grpo", "ppo") and r.group_source == "simulator" and r.group_size < 2:
        out.append(f"group_size = {r.group_size}: loss = {r.loss!r} normalises rewards within a "
                   "group of slates for the same request and needs group_size >= 2 (the paper "
                   "uses 5); or set group_source: batch for one slate per request with a batch "
                   "baseline")
    if r.data in ("logged", "teacher") and r.group_size != 1:
        out.append(f"group_size = {r.group_size}: data = {r.data!r} has exactly one slate per "
                   "request; set group_size: 1")
    if r.beta > 0 and not r.is_policy_gradient:
        out.append(f"beta = {r.beta}: the KL penalty is a term of the policy-gradient losses "
                   f"(reinforce, grpo, ppo), not of loss = {r.loss!r}: set beta: 0, or use a "
                   "policy-gradient loss with data: fresh")
    elif r.beta > 0 and r.kl_estimator == "k1":
        out.append("kl_estimator = 'k1' with beta > 0: as a loss term k1 = -log r has zero "
                   "expected gradient (E_pi[grad log pi] = 0), so the penalty would do nothing; "
                   "use kl_estimator: k3 (the gradient of KL(pi_0 || pi), as in GRPO) or k2 "
                   "(the gradient of KL(pi || pi_0))")
    if r.beta > 0 and r.data != "fresh":
        out.append(f"beta = {r.beta}: the KL penalty is estimated on slates sampled from the "
                   f"current policy, which data = {r.data!r} does not provide: set beta: 0 or "
                   "data: fresh")
    if r.epochs > 1 and r.loss in ("reinforce", "grpo"):
        out.append(f"epochs = {r.epochs} with loss = {r.loss!r}: reusing a sampled batch makes "
                   "later updates off-policy with no correction; use loss: ppo (clipped ratio) "
                   "for reuse, or epochs: 1")
    if r.rounds > 1 and not (r.data == "fresh" and r.loss == "nll"):
        out.append(f"rounds = {r.rounds} regenerates slates from the current policy during the "
                   "day, which only data: fresh with loss: nll (Iterative-SFT) does; set rounds: 1")
    if r.baseline != "none" and r.loss != "reinforce":
        out.append(f"baseline = {r.baseline!r} applies to loss: reinforce only (grpo and ppo "
                   "always centre rewards); set baseline: none")
    if r.data == "traces":
        try:
            comp = r.companion()
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            comp, why = None, str(err).replace("\n", "; ")
        else:
            why = f"its loss is {comp.loss!r}"
        if comp is None or not comp.is_policy_gradient:
            rl = sorted(k for k, v in PRESETS.items() if v.get("loss") in POLICY_GRADIENT_LOSSES)
            out.append(f"traces_from = {r.traces_from!r}: the traces come from a policy-gradient "
                       f"regime ({why}); use one of {rl} or a mapping based on one")
        elif r.group_size != comp.group_size:
            out.append(f"group_size = {r.group_size}: the traces of {r.traces_from!r} have "
                       f"{comp.group_size} slates per request; set group_size: {comp.group_size}")
    return out


PRESETS: dict[str, dict[str, Any]] = {
    # The production norm: at the end of each day, BCE on that day's logged impressions, deploy.
    "supervised_daily": {"data": "logged", "loss": "bce"},
    # Off-policy expert: imitate the ground truth's oracle slate (the paper's 70B-teacher SFT).
    "teacher_sft": {"data": "teacher", "loss": "nll"},
    # Self-SFT: 5 slates per request sampled from the frozen pi_0, kept if clicked.
    "self_sft": {"data": "initial", "loss": "nll", "filter": "positive", "group_size": 5},
    # Iterative-SFT: like Self-SFT but regenerated from the current policy in 4 rounds per day.
    "iterative_sft": {"data": "fresh", "loss": "nll", "filter": "positive", "group_size": 5,
                      "rounds": 4},
    # REINFORCE with the reward as weight and no baseline (the paper's ablation); 5 slates per
    # request so that it differs from grpo only by the advantage.
    "reinforce": {"data": "fresh", "loss": "reinforce", "group_size": 5},
    # GRPO: group of 5 slates per request answered by the simulator, one update per batch, no KL.
    "grpo": {"data": "fresh", "loss": "grpo", "group_size": 5},
    # GRPO with the paper's KL coefficient 0.05 (k3 estimator) against pi_0.
    "grpo_kl": {"data": "fresh", "loss": "grpo", "group_size": 5, "beta": 0.05},
    # The production-realistic GRPO: one slate per request, batch-normalised advantages.
    "grpo_batch": {"data": "fresh", "loss": "grpo", "group_source": "batch"},
    # PPO: GRPO's advantages with the clipped ratio and 4 updates per sampled batch.
    "ppo": {"data": "fresh", "loss": "ppo", "group_size": 5, "epochs": 4},
    # SFT on the slates (clicked ones) that a companion GRPO learner samples in the same run.
    "sft_on_rl_traces": {"data": "traces", "loss": "nll", "filter": "positive", "group_size": 5,
                         "traces_from": "grpo"},
}
"""Named regimes of the research (see ``../shared/ARCHITECTURE.md``); any field can be
overridden, e.g. ``{preset: grpo, group_size: 8}``."""


def expand_preset(spec: str | dict) -> dict:
    """A preset name or mapping -> the mapping of fields to validate (preset values first, the
    mapping's own values on top). Raises ValueError for an unknown preset, TypeError for
    something that is neither a name nor a mapping."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise TypeError(
            f"regime = {spec!r}: give a preset name ({', '.join(PRESETS)}) or a mapping of "
            "RegimeConfig fields"
        )
    name = spec.get("preset")
    if name is None:
        return dict(spec)
    if name not in PRESETS:
        raise ValueError(
            f"regime.preset = {name!r}: unknown preset; use one of {', '.join(PRESETS)} "
            "(or leave preset out and give data/loss/... for a custom regime)"
        )
    return {**PRESETS[name], **spec}


def resolve_regime(spec: str | dict | RegimeConfig) -> RegimeConfig:
    """A validated :class:`RegimeConfig` from a preset name, a mapping or a config.

    - ``"grpo"``: the preset.
    - ``{"preset": "grpo", "beta": 0.1}``: the preset with some fields overridden.
    - ``{"data": "fresh", "loss": "reinforce", ...}``: a custom regime (preset None).

    Raises :class:`ConfigError` naming the field, the value and the fix.
    """
    if isinstance(spec, RegimeConfig):
        return spec
    try:
        data = expand_preset(spec)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    return validate(RegimeConfig, data, source="regime.")
