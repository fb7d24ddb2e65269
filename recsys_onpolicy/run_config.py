"""The configuration of one recsys run: one world, one model, one regime, one seed.

The experiment configs (several regimes x seeds, controls, sweeps) wrap this; the daily loop
(:mod:`recsys_onpolicy.loop`) runs exactly one :class:`RecsysRunConfig`.
"""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from recsys_onpolicy.model import ModelConfig
from recsys_onpolicy.regimes.config import RegimeConfig, expand_preset
from simulators.config import WorldConfig
from simulators.typed_config import StrictModel


class RemovalConfig(StrictModel):
    """The cohort-removal experiment: from ``from_day`` on, the cohort's samples leave the
    training stream; its users are still served and simulated (and probed)."""

    cohort: int | list[int] | None = None
    """Cohort id (or ids) to remove; None = no removal. Their requests are the ``heldout``
    group of the probes, all other cohorts the ``train`` group."""
    from_day: int = Field(default=0, ge=0)
    """First day (0-based) whose training data no longer contains the cohort; the model after
    ``from_day`` days of training (metric step ``from_day``) is the last one that saw it."""
    control: bool = False
    """True = the paired control of this removal: nothing leaves the training stream, but the
    probes still report ``cohort`` as the ``heldout`` group and the other cohorts as ``train``,
    so that the control's Gain, Drop and KL cover the same users as the removal run's. An
    experiment sets it on its own paired controls (``control: true`` there)."""

    @property
    def cohorts(self) -> list[int]:
        """The removed cohorts as a list (empty without removal); in a control run, the cohorts
        the probes hold out (still trained on)."""
        if self.cohort is None:
            return []
        return [self.cohort] if isinstance(self.cohort, int) else list(self.cohort)

    def removed_on(self, day: int) -> list[int]:
        """The cohorts left out of day ``day``'s training data (none in a control run)."""
        return [] if self.control or day < self.from_day else self.cohorts


class WarmupConfig(StrictModel):
    """How the base policy pi_0 is made before day 0: supervised BCE on the logs of a
    uniform-random logging policy over every cohort, for ``days`` simulated days."""

    days: int = Field(default=3, ge=0, le=365)
    """Days of uniform-random logging (each followed by a BCE update on that day); 0 = pi_0 is
    the randomly initialised model. These days happen in the world before experiment day 0."""
    epochs: int = Field(default=1, ge=1, le=64)
    """Passes over each warm-up day's impressions."""


class CheckpointConfig(StrictModel):
    """End-of-day checkpoints (model, optimizers, world, generators, metrics)."""

    enabled: bool = True
    """Write ``checkpoint.pt`` atomically at the end of every day; a run with a checkpoint in
    its folder continues from the last completed day."""
    keep_daily: bool = False
    """Also keep a copy per day (``checkpoints/day=0007.pt``), e.g. to probe old models later."""


class RecsysRunConfig(StrictModel):
    """One run of the daily loop: serve -> simulate -> log -> train -> probe -> checkpoint."""

    world: WorldConfig = Field(default_factory=WorldConfig)
    """The simulated world (``simulators.config.WorldConfig``; presets in simulators.presets)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The scorer and its optimisers (the regime may override learning rates)."""
    regime: RegimeConfig = Field(default_factory=lambda: RegimeConfig(preset="supervised_daily"))
    """The training regime: a preset name (``grpo``), a preset with overrides
    (``{preset: grpo, beta: 0.1}``) or a full custom regime."""
    days: int = Field(default=10, ge=1, le=10_000)
    """Experiment days after the warm-up."""
    removal: RemovalConfig = Field(default_factory=RemovalConfig)
    """Cohort removal (none by default)."""
    serving_temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    """Plackett-Luce temperature of the served policy (all regimes serve the same way); the
    logged propensities are the real probabilities of the served slates."""
    serve_batch_size: int = Field(default=4096, ge=1)
    """Requests per served batch (a streaming regime updates after each)."""
    train_batch_size: int = Field(default=512, ge=1)
    """Requests per update (each with its G slates for group-sampling regimes)."""
    probe_requests: int = Field(default=512, ge=1)
    """Requests per group (train / heldout) of the loop's built-in expected-clicks probe, the
    one a bare ``loop.run`` uses (e.g. ``bench/scale.py``). Experiments (``recsys-onpolicy
    run``) probe with :class:`~recsys_onpolicy.probes.DailyProbes` instead, sized by
    ``probes.users_per_cohort``: there this key changes nothing."""
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    """How pi_0 is made."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """End-of-day checkpoints."""
    write_logs: bool = True
    """Write each experiment day's impressions as Parquet (``logs/day=NNNN/part-0.parquet``)."""
    seed: int = Field(default=0, ge=0)
    """Seed of every generator of the run (world, model init, serving, training, probes); the
    same seed gives the same world, the same pi_0 and the same day-0 requests in every regime."""

    @field_validator("regime", mode="before")
    @classmethod
    def _preset(cls, v):
        return expand_preset(v) if isinstance(v, (str, dict)) else v  # else pydantic complains

    @model_validator(mode="after")
    def _check(self) -> RecsysRunConfig:
        n = self.world.users.n_cohorts
        bad = [c for c in self.removal.cohorts if not 0 <= c < n]
        if bad:
            raise ValueError(f"removal.cohort = {self.removal.cohort}: cohorts are 0..{n - 1} in "
                             "this world; pick ids in that range")
        if self.removal.cohorts and len(set(self.removal.cohorts)) == n:
            raise ValueError(f"removal.cohort = {self.removal.cohort} removes every cohort: "
                             "nothing would be left to train on; keep at least one")
        if self.removal.cohorts and self.removal.from_day >= self.days:
            raise ValueError(f"removal.from_day = {self.removal.from_day} >= days = {self.days}: "
                             "the cohort would never leave the stream; lower from_day or raise "
                             "days")
        return self
