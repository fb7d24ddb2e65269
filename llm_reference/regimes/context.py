"""What every regime gets: the policy being trained, the frozen base, the tasks, one generator.

A regime is a short function ``regime(ctx) -> Samples | None`` that reads top to bottom: make or
sample data, compute a loss from :mod:`recsys_onpolicy.objectives`, call :meth:`RunContext.update`,
report with :meth:`RunContext.log_step`. Everything model-specific (GPT or Hugging Face) hides
behind the language-model callables and the codec of :mod:`llm_reference.sampling`.

Every update sees ``batch_prompts x group_size`` sequences, so regimes compare at equal
sequences per update and equal numbers of updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from lightning.fabric import Fabric

from llm_reference.config import RegimeConfig
from llm_reference.sampling import LanguageModel, Samples, TokenCodec, completion_logprob, generate
from llm_reference.tasks import TaskSuite


def _no_log(step: int, values: dict[str, float]) -> None:
    """The default step reporter: does nothing."""


@dataclass
class RunContext:
    """One post-training run.

    Attributes:
        policy: the trainable model (fabric-wrapped), ``policy(tokens, mask, positions) -> logits``.
        ref: the frozen base model pi_0 (the KL reference and the Self-SFT sampler).
        codec: text <-> ids.
        suite: the tasks; regimes train on training-split prompts of ``suite.target``.
        cfg: this preset's settings.
        fabric: device, precision, backward.
        optimizer: the fabric-wrapped optimizer of ``policy``.
        gen: the one generator of this run (prompt draws, sampling, minibatch order).
        log_step: called after each update with (step, {metric: value}); the recipe logs the
            values and evaluates on its schedule.
        traces: GRPO samples (with ``rewards``) for sft_on_rl_traces; None otherwise.
        max_batch: most sequences sampled in one forward pass (runtime.max_batch).
    """

    policy: LanguageModel
    ref: LanguageModel
    codec: TokenCodec
    suite: TaskSuite
    cfg: RegimeConfig
    fabric: Fabric
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    log_step: Callable[[int, dict[str, float]], None] = _no_log
    traces: Traces | None = None
    max_batch: int = 1024

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    def train_prompts(self, n: int) -> list[str]:
        """``n`` target prompts from the training split."""
        return self.suite.train_prompts(self.suite.target, n, self.gen)

    def sample(
        self, prompts: list[str], per_prompt: int, model: LanguageModel | None = None
    ) -> Samples:
        """``per_prompt`` completions of each prompt (prompt-major order, groups contiguous),
        at the regime's temperature, from ``model`` (default: the current policy)."""
        rep = [p for p in prompts for _ in range(per_prompt)]
        return generate(
            model or self.policy,
            self.codec,
            rep,
            max_new_tokens=self.cfg.max_new_tokens,
            gen=self.gen,
            device=self.device,
            temperature=self.cfg.temperature,
            max_batch=self.max_batch,
        )

    def rewards(self, samples: Samples) -> torch.Tensor:
        """0/1 target rewards of ``samples``: (N,) float on the device."""
        r = [self.suite.target.reward(p, t) for p, t in zip(samples.prompts, samples.texts)]
        return torch.tensor(r, dtype=torch.float32, device=self.device)

    def logp(
        self, samples: Samples, model: LanguageModel | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Summed completion log-probabilities (N,) under ``model`` (default: the policy)."""
        return completion_logprob(
            model or self.policy, self.codec, samples, self.device, temperature
        )

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` with gradient clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        self.fabric.clip_gradients(self.policy, self.optimizer, max_norm=self.cfg.grad_clip)
        self.optimizer.step()

    def minibatches(self, data: Samples) -> Iterator[Samples]:
        """Endless minibatches of ``batch_prompts x group_size`` sequences, reshuffled per epoch."""
        size = self.cfg.batch_prompts * self.cfg.group_size
        if len(data) == 0:
            raise ValueError("no training sequences to make minibatches from")
        while True:
            order = torch.randperm(len(data), generator=self.gen).tolist()
            for i in range(0, len(order), size):
                idx = order[i : i + size]
                if len(idx) < size and len(data) >= size:
                    break  # drop the ragged tail when a full batch exists
                yield Samples(
                    [data.prompts[j] for j in idx],
                    [data.completion_ids[j] for j in idx],
                    [data.texts[j] for j in idx],
                )


@dataclass
class Traces:
    """Samples an RL run generated, with their rewards (input of sft_on_rl_traces)."""

    samples: Samples
    rewards: list[float] = field(default_factory=list)
