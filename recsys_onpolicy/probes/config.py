"""The probes' knobs: how big the fixed probe set is, which label variant the AUC uses, and
which probe families run every day."""
from __future__ import annotations

from pydantic import Field

from simulators.typed_config import StrictModel


class ProbeConfig(StrictModel):
    """What the daily probes measure and on how many probe requests."""

    users_per_cohort: int = Field(default=500, ge=1, le=1_000_000)
    """Probe requests per cohort: distinct users drawn uniformly from the cohort (capped at its
    size), one request each, with candidates and a uniform-random slate drawn once at day 0. The
    same requests serve the AUC, expected clicks (Gain/Drop) and KL probes."""
    noise_free: bool = False
    """AUC labels. False: clicks sampled by the world's choice model, with the label noise fixed
    across days (common random numbers). True: the true click probabilities as soft labels (each
    impression counts as a positive with weight p and a negative with weight 1 - p)."""
    slate_samples: int = Field(default=4, ge=1, le=1024)
    """Slates sampled per probe request for expected clicks of the served policy and for the
    Monte Carlo KL on whole slates (more = less noise, linear cost)."""
    batch_size: int = Field(default=4096, ge=1)
    """Probe requests scored per model call (bounds memory: batch_size x C scores)."""
    auc: bool = True
    """Measure the cohort-holdout AUC (``probe/auc``, ``probe/auc_oracle``)."""
    target: bool = True
    """Measure expected clicks of the served policy, Gain and Drop (``target/*``, ``probe/drop``)."""
    kl: bool = True
    """Measure KL(pi_0 || pi_t) (``probe/kl_to_base``, ``probe/kl_to_base_slate``)."""
    feedback: bool = True
    """Measure the feedback-loop metrics of each served day (``feedback/*``)."""
    drift: bool = True
    """Measure parameter drift against pi_0 (``drift/*``)."""
