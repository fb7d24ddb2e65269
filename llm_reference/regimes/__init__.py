"""Post-training regimes of the LM world, by preset name (same names and meanings as recsys).

=================== ======= ============ ========== ====================================
preset              data    loss         filter     notes
=================== ======= ============ ========== ====================================
teacher_sft         teacher nll          -          off-policy expert (another style)
self_sft            initial nll          reward = 1 samples from pi_0 once
iterative_sft       fresh   nll          reward = 1 regenerated every round
reinforce           fresh   reinforce    -          reward as weight, no baseline
grpo                fresh   grpo         -          group G, beta 0
grpo_kl             fresh   grpo         -          group G, beta 0.05
sft_on_rl_traces    traces  nll          reward = 1 the samples of the same seed's grpo run
=================== ======= ============ ========== ====================================

One file per loss family: :mod:`.sft` (nll) and :mod:`.policy_gradient` (reinforce, grpo).
"""

from __future__ import annotations

from collections.abc import Callable

from llm_reference.regimes.context import RunContext, Traces
from llm_reference.regimes.policy_gradient import grpo, reinforce
from llm_reference.regimes.sft import iterative_sft, self_sft, sft_on_rl_traces, teacher_sft

REGIMES: dict[str, Callable[[RunContext], Traces | None]] = {
    "teacher_sft": teacher_sft,
    "self_sft": self_sft,
    "iterative_sft": iterative_sft,
    "reinforce": reinforce,
    "grpo": grpo,
    "grpo_kl": grpo,
    "sft_on_rl_traces": sft_on_rl_traces,
}
"""Preset name -> regime function (grpo_kl is grpo with the preset's beta)."""

__all__ = ["REGIMES", "RunContext", "Traces"]
