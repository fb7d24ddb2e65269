"""Typed configs of the small LM world and of the Hugging Face path.

:class:`LMRecipeConfig` is the file ``configs/llm/tiny_lm_recipe.yaml``: the GPT, the tasks,
pretraining of the base model, the post-training regimes and their shared settings, evaluation
and runtime. :class:`HFRecipeConfig` runs the same regimes on a Hugging Face causal LM read from
a local directory. :func:`load_recipe_config` reads a YAML file into the right one, and
:func:`smoke_config` is the tiny budget the tests run.

Regime presets carry fixed settings (:data:`PRESET_SETTINGS`, e.g. ``grpo_kl`` has beta 0.05);
``overrides`` change any regime setting for one preset, e.g.
``overrides: {teacher_sft: {lr: 3e-4}}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from simulators.typed_config import (
    ConfigError,
    StrictModel,
    format_validation_error,
    read_yaml,
    validate,
)

Preset = Literal[
    "teacher_sft", "self_sft", "iterative_sft", "reinforce", "grpo", "grpo_kl", "sft_on_rl_traces"
]
PRESETS: tuple[str, ...] = get_args(Preset)
NonTargetTask = Literal["addition", "reversal", "sorting", "copying"]

PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "grpo": {"beta": 0.0},
    "grpo_kl": {"beta": 0.05},
}
"""Settings a preset fixes (before ``overrides``): GRPO without and with the KL penalty."""

MAX_PARAMS = 5_000_000


def _unique(values: list, field: str) -> list:
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{field} lists {dupes} more than once; list each once")
    return values


class GPTConfig(StrictModel):
    """Shape of the small GPT (the vocabulary size comes from the tokenizer)."""

    block_size: int = Field(32, ge=8, le=512)
    """Longest sequence (prompt + answer + EOS) in tokens; sets the position table."""
    n_layer: int = Field(2, ge=1, le=12)
    """Transformer blocks."""
    n_head: int = Field(4, ge=1, le=16)
    """Attention heads per block; must divide n_embd."""
    n_embd: int = Field(64, ge=8, le=512)
    """Width of the residual stream."""

    @model_validator(mode="after")
    def _check(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}; "
                "choose n_head among the divisors of n_embd"
            )
        approx = 12 * self.n_layer * self.n_embd**2
        if approx > MAX_PARAMS:
            raise ValueError(
                f"n_layer = {self.n_layer}, n_embd = {self.n_embd} gives about {approx:,} "
                f"parameters; the small LM world stays under {MAX_PARAMS:,} "
                "(lower n_layer or n_embd)"
            )
        return self


class TaskConfig(StrictModel):
    """The procedural tasks: the target (countdown) and the non-target tasks (forgetting probes)."""

    non_target: list[NonTargetTask] = Field(
        default_factory=lambda: ["addition", "reversal", "sorting", "copying"], min_length=1
    )
    """Tasks whose greedy accuracy measures forgetting (the base model is pretrained on them)."""
    countdown_numbers: int = Field(3, ge=2, le=4)
    """How many numbers a countdown prompt gives; the answer uses each once with + and -."""
    countdown_max: int = Field(9, ge=2, le=9)
    """Largest countdown number (single digits, 1..countdown_max)."""
    addition_digits: int = Field(2, ge=1, le=4)
    """Digits of each addend in the addition task."""
    string_min_len: int = Field(3, ge=1, le=10)
    """Shortest digit string in reversal, sorting and copying."""
    string_max_len: int = Field(5, ge=1, le=10)
    """Longest digit string in reversal, sorting and copying."""
    eval_share: float = Field(0.2, gt=0.0, lt=0.6)
    """Share of each task's problems held out (by a hash of the problem, so reorderings of one
    problem fall on the same side) for evaluation only."""
    n_eval: int = Field(200, ge=4, le=5000)
    """Held-out prompts per task for greedy accuracy."""
    eval_seed: int = Field(1234, ge=0)
    """Seed of the held-out prompt sets (fixed across regimes and seeds)."""

    @field_validator("non_target")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        return _unique(v, "tasks.non_target")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.string_min_len > self.string_max_len:
            raise ValueError(
                f"string_min_len = {self.string_min_len} > string_max_len = {self.string_max_len}; "
                "make the minimum at most the maximum"
            )
        return self

    def max_prompt_len(self) -> int:
        """Longest prompt any task writes, in characters."""
        countdown = (
            1
            + self.countdown_numbers
            + 1
            + len(str(self.countdown_numbers * self.countdown_max))
            + 1
        )
        addition = 3 + 2 * self.addition_digits
        strings = 2 + self.string_max_len
        return max(countdown, addition, strings)

    def max_answer_len(self) -> int:
        """Longest correct answer any task writes, in characters (EOS not counted)."""
        return max(2 * self.countdown_numbers - 1, self.addition_digits + 1, self.string_max_len)


class PretrainConfig(StrictModel):
    """Pretraining that makes the base model: the non-target mixture plus a little target data."""

    steps: int = Field(3000, ge=1)
    """Optimizer updates."""
    batch_size: int = Field(128, ge=1)
    """Sequences per update."""
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    """Peak AdamW learning rate (linear warmup, cosine decay to lr * min_lr_ratio)."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Final learning rate as a share of lr."""
    warmup: int = Field(100, ge=0)
    """Warmup updates."""
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    """AdamW weight decay."""
    target_share: float = Field(0.02, ge=0.0, le=1.0)
    """Share of pretraining sequences that are target-task (countdown) solutions, so the base model
    solves some target prompts (RL needs reward) and is multi-modal."""
    seed: int = Field(0, ge=0)
    """Seed of initialisation and data order; one base model serves every post-training seed."""


class RegimeConfig(StrictModel):
    """Settings shared by the post-training regimes (a preset reads the ones it needs)."""

    steps: int = Field(150, ge=1)
    """Optimizer updates per run (iterative_sft splits them over its rounds)."""
    lr: float = Field(3e-4, gt=0.0, le=1.0)
    """Adam learning rate (constant; default: the pretraining peak lr / 10). The lr sweep varies
    it per regime."""
    batch_prompts: int = Field(16, ge=1)
    """Prompts per update; every update sees batch_prompts x group_size sequences."""
    group_size: int = Field(5, ge=2, le=64)
    """Samples per prompt: the GRPO group, and the samples Self-SFT / Iterative-SFT draw."""
    temperature: float = Field(0.8, gt=0.0, le=5.0)
    """Sampling temperature of every on-policy / self-generated sample (not of evaluation)."""
    beta: float = Field(0.0, ge=0.0, le=10.0)
    """KL penalty coefficient against the frozen base (presets set it: grpo 0, grpo_kl 0.05)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Estimator of the KL penalty on sequences (objectives.kl_penalty). As a loss term ``k3``
    (GRPO's choice) follows the gradient of KL(pi_0 || pi) and ``k2`` that of KL(pi || pi_0);
    ``k1`` is refused for a regime with beta > 0: its expected gradient is zero, so it would
    penalise nothing."""
    n_train_prompts: int = Field(2048, ge=1)
    """Target prompts in the SFT datasets: teacher answers, Self-SFT samples, and each
    Iterative-SFT round's regenerated samples."""
    rounds: int = Field(4, ge=1)
    """Iterative-SFT rounds; each regenerates and filters data from the current model."""
    traces_keep_correct: bool = True
    """sft_on_rl_traces trains only on GRPO samples with reward 1 (False: on all of them)."""
    max_new_tokens: int = Field(8, ge=1, le=512)
    """Tokens a sampled answer may take, EOS included; an answer without EOS gets reward 0."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Gradient norm clip."""

    @model_validator(mode="after")
    def _check(self) -> RegimeConfig:
        if self.rounds > self.steps:
            raise ValueError(
                f"rounds = {self.rounds} > steps = {self.steps}; every Iterative-SFT round "
                "needs at least one update (lower rounds or raise steps)"
            )
        return self


class EvalConfig(StrictModel):
    """When and how a run is measured (greedy accuracy per task, KL to the base)."""

    every: int = Field(25, ge=0)
    """Updates between evaluations; 0 measures only before and after training."""
    kl_prompts: int = Field(64, ge=1)
    """Held-out target prompts on which KL(pi_0 || pi) is estimated."""
    kl_samples: int = Field(4, ge=1)
    """Completions sampled from pi_0 per KL prompt."""


class RuntimeConfig(StrictModel):
    """Device, precision, threads and folders."""

    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    """lightning.fabric accelerator; auto picks a GPU when there is one."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    """lightning.fabric precision."""
    threads: int = Field(1, ge=1, le=256)
    """torch CPU threads. 1 by default: the small GPT's ops are too small for intra-op threads to
    pay (2 threads on 2 busy cores measured ~13x slower); raise it for a large model on CPU."""
    max_batch: int = Field(1024, ge=1)
    """Most sequences generated or evaluated in one forward pass (larger sets are chunked); lower
    it for a large Hugging Face model. Training batches (batch_prompts x group_size) are not
    chunked. Chunks draw their samples one after another from the same generator, so another
    ``max_batch`` gives other (equally distributed) samples: keep it equal across runs whose
    numbers you compare."""
    cache_dir: str | None = None
    """Folder of cached base checkpoints; None: $RECSYS_ONPOLICY_CACHE/llm_reference or
    ~/.cache/recsys-onpolicy/llm_reference."""
    run_dir: str | None = None
    """Folder for metrics.parquet; None writes nothing."""
    verbose: bool = True
    """Print progress and the Gain/Drop table."""

    def resolved_cache_dir(self) -> Path:
        """The cache folder to use."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get("RECSYS_ONPOLICY_CACHE")
        root = Path(env) if env else Path.home() / ".cache" / "recsys-onpolicy"
        return root / "llm_reference"


class RecipeBase(StrictModel):
    """What the tiny-world recipe and the Hugging Face recipe share."""

    domain: Literal["llm"] = "llm"
    """Domain column of the result schema."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """Post-training seeds (sampling, minibatch order, train prompts)."""
    regimes: list[Preset] = Field(default_factory=lambda: list(PRESETS), min_length=1)
    """Presets to run, in order (sft_on_rl_traces reuses the grpo run of the same seed)."""
    tasks: TaskConfig = Field(default_factory=TaskConfig)
    """The procedural tasks."""
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    """Settings shared by all regimes."""
    overrides: dict[Preset, dict[str, Any]] = Field(default_factory=dict)
    """Per-preset changes of regime settings, e.g. {teacher_sft: {lr: 0.0003}}."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation schedule."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Device, precision, threads, folders."""

    @field_validator("seeds", "regimes")
    @classmethod
    def _no_repeats(cls, v: list, info) -> list:
        return _unique(v, info.field_name)

    @model_validator(mode="after")
    def _check_overrides(self) -> RecipeBase:
        for preset in self.overrides:
            self.regime_config(preset)
        longest = self.tasks.max_answer_len() + 1
        for used, cfg in self.generation_settings().items():
            if cfg.max_new_tokens < longest:
                raise ValueError(
                    f"regime.max_new_tokens = {cfg.max_new_tokens} ({used}) cannot hold the "
                    f"longest answer plus EOS ({longest} tokens); raise it to at least {longest}"
                )
            if cfg.beta > 0 and cfg.kl_estimator == "k1":
                raise ValueError(
                    f"kl_estimator = 'k1' with beta = {cfg.beta} ({used}): as a loss term k1 = "
                    "-log r has zero expected gradient (E_pi[grad log pi] = 0), so the KL "
                    "penalty would do nothing; use k3 (the gradient of KL(pi_0 || pi), as in "
                    "GRPO) or k2 (that of KL(pi || pi_0))"
                )
        return self

    def generation_settings(self) -> dict[str, RegimeConfig]:
        """Every setting a run generates with: the shared one (evaluation uses it), each listed
        preset's, and grpo's when sft_on_rl_traces needs its run."""
        presets = list(self.regimes)
        if "sft_on_rl_traces" in presets and "grpo" not in presets:
            presets.append("grpo")
        return {"evaluation": self.regime} | {p: self.regime_config(p) for p in presets}

    def regime_config(self, preset: str) -> RegimeConfig:
        """The settings of one preset: shared settings, then the preset's, then ``overrides``."""
        merged = {
            **self.regime.model_dump(),
            **PRESET_SETTINGS.get(preset, {}),
            **self.overrides.get(preset, {}),
        }  # type: ignore[arg-type]
        try:
            return RegimeConfig.model_validate(merged)
        except ValidationError as err:  # one line naming overrides.<preset>.<field>
            raise ValueError(
                f"overrides.{preset}: {format_validation_error(err, RegimeConfig)}"
            ) from None


class LMRecipeConfig(RecipeBase):
    """The paper's recipe on the small LM world (``configs/llm/tiny_lm_recipe.yaml``)."""

    experiment: str = "tiny_lm_recipe"
    """Experiment column of the result schema."""
    model: GPTConfig = Field(default_factory=GPTConfig)
    """The small GPT."""
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    """Pretraining of the base model (cached by a hash of this, the model and the tasks)."""

    @model_validator(mode="after")
    def _check_block(self) -> LMRecipeConfig:
        need = self.tasks.max_prompt_len() + max(
            cfg.max_new_tokens for cfg in self.generation_settings().values()
        )
        if self.model.block_size < need:
            raise ValueError(
                f"model.block_size = {self.model.block_size} is shorter than the longest prompt "
                f"plus max_new_tokens ({need}); raise block_size to at least {need}"
            )
        return self


class HFModelConfig(StrictModel):
    """A Hugging Face causal LM on local disk (never downloaded)."""

    path: str
    """Local folder with config.json, the weights and the tokenizer files."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype at load time."""
    prompt_template: str = "{prompt}"
    """How a task prompt is shown to the model; must contain {prompt}, which is replaced by the
    prompt (other braces are kept as written)."""

    @field_validator("prompt_template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError(
                f"prompt_template {v!r} has no '{{prompt}}' slot; "
                "add one where the task prompt goes"
            )
        return v


class HFRecipeConfig(RecipeBase):
    """The same regimes on a Hugging Face causal LM (optional ``[llm]`` extra)."""

    experiment: str = "hf_recipe"
    """Experiment column of the result schema."""
    model: HFModelConfig
    """The local model."""


def load_recipe_config(path: str | Path) -> LMRecipeConfig | HFRecipeConfig:
    """Read a YAML recipe: an ``hf_recipe`` experiment (or a model with a ``path``) gives
    :class:`HFRecipeConfig`, anything else :class:`LMRecipeConfig`. Errors name the field."""
    data = read_yaml(path)
    if data.get("domain", "llm") != "llm":
        raise ConfigError(
            f"{path}: domain = {data.get('domain')!r}: this loader reads LLM recipes (domain: llm)"
        )
    model = data.get("model")
    is_hf = data.get("experiment") == "hf_recipe" or (isinstance(model, dict) and "path" in model)
    return validate(HFRecipeConfig if is_hf else LMRecipeConfig, data, source=f"{path}: ")


def smoke_config(**changes: Any) -> LMRecipeConfig:
    """A budget that runs every regime in seconds (tests): a tiny GPT, few steps, one seed.

    ``changes`` are top-level fields replaced after the smoke defaults (e.g. ``regimes=[...]``).
    """
    base: dict[str, Any] = {
        "seeds": [0],
        "model": {"block_size": 24, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "tasks": {"n_eval": 16, "non_target": ["addition", "copying"]},
        "pretrain": {"steps": 30, "batch_size": 32, "warmup": 5},
        "regime": {
            "steps": 2,
            "batch_prompts": 4,
            "group_size": 2,
            "n_train_prompts": 8,
            "rounds": 2,
        },
        "eval": {"every": 0, "kl_prompts": 4, "kl_samples": 2},
        "runtime": {"verbose": False},
    }
    base.update(changes)
    return LMRecipeConfig.model_validate(base)
