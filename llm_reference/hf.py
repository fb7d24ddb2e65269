"""The same regimes on a Hugging Face causal LM read from a local folder (optional ``[llm]`` extra).

For users with, e.g., Qwen2.5 or Llama weights on disk and a GPU: ``run_hf_recipe(cfg)`` loads
the model and tokenizer with ``local_files_only=True`` (nothing is ever downloaded), wraps them
in the two interfaces the regimes use (a language-model callable and a codec, see
:mod:`llm_reference.sampling`) and runs :func:`llm_reference.recipe.run_regimes` with the same
tasks, presets, evaluation and result schema as the small LM world. There is no pretraining:
the loaded model is pi_0.

- ``transformers`` is imported only when a model is loaded; without it the error says which
  extra to install. A missing folder or a folder without ``config.json`` is a clear error.
- Prompts are the task prompts put through ``model.prompt_template`` (e.g. an instruction
  around ``{prompt}``); answers are decoded up to the tokenizer's EOS with whitespace removed
  (no task answer contains whitespace), then checked by the same verifiers.
- The pad id is the tokenizer's pad token, or its EOS when it has none.
- A prompt starts with the tokenizer's BOS when the tokenizer puts one there itself (Llama,
  Gemma, Mistral: the model was trained with it), as ``tokenizer(prompt)`` would; answers never
  carry special tokens.

Run a config: ``python -m llm_reference.hf CONFIG.yaml`` (an ``HFRecipeConfig`` with
``model.path``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

from llm_reference.config import HFModelConfig, HFRecipeConfig, load_recipe_config
from llm_reference.recipe import format_table, gain_drop_table, make_fabric, run_regimes
from llm_reference.tasks import build_suite
from recsys_onpolicy.results import write_metrics

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to get it."""
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "the Hugging Face path needs the transformers package: "
            "pip install 'recsys-onpolicy[llm]' "
            "(or pip install transformers)"
        ) from None
    return transformers


class HFCausalLM(torch.nn.Module):
    """Adapter: ``forward(tokens (B, T), mask (B, T), positions (B, T))`` -> logits (B, T, V)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=tokens, attention_mask=mask.long(), position_ids=positions, use_cache=False
        )
        return out.logits  # (B, T, V)


class HFCodec:
    """A Hugging Face tokenizer as the sampler's codec (see the module docstring)."""

    def __init__(self, tokenizer: Any, prompt_template: str = "{prompt}") -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no EOS token (eos_token); answers could never end: "
                "set one and save it"
            )
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = (
            int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        )
        bos = tokenizer.bos_token_id
        # Does the tokenizer itself start a text with BOS? (Some add only EOS, or nothing.)
        probe = list(tokenizer.encode("0", add_special_tokens=True))
        self.bos_id = int(bos) if bos is not None and probe[:1] == [bos] else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` alone (no special tokens: answers, continuations)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of the templated prompt (``{prompt}`` replaced; any other brace is text),
        after BOS when the tokenizer adds one and the template does not start with it."""
        ids = self.encode(self.prompt_template.replace("{prompt}", prompt))
        if self.bos_id is None or ids[:1] == [self.bos_id]:
            return ids
        return [self.bos_id, *ids]

    def decode(self, ids: Sequence[int]) -> str:
        """The answer text up to EOS, whitespace removed. A special token the model emitted
        inside the answer stays in the text (e.g. ``4<bos>6``), so a verifier rejects it
        rather than reading ``46``."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return "".join(self.tokenizer.decode(ids, skip_special_tokens=False).split())


def load_hf_model(cfg: HFModelConfig) -> tuple[HFCausalLM, HFCodec]:
    """Model (as :class:`HFCausalLM`, on CPU) and codec from ``cfg.path``; never downloads."""
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model.path = {str(path)!r}: no such folder. The Hugging Face path never downloads: "
            "point it at a folder written by save_pretrained() "
            "(config.json, weights, tokenizer files)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path = {str(path)!r} has no config.json; "
            "it must be a folder written by save_pretrained()"
        )
    tr = require_transformers()
    tokenizer = tr.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = tr.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    model = model.to(DTYPES[cfg.dtype])
    return HFCausalLM(model), HFCodec(tokenizer, cfg.prompt_template)


def run_hf_recipe(cfg: HFRecipeConfig, log: Callable[[str], None] = print) -> pl.DataFrame:
    """Every preset x seed of ``cfg`` on the local model; prints the Gain/Drop table, writes
    ``<run_dir>/metrics.parquet`` when set, returns the long frame (``experiment="hf_recipe"``)."""
    fabric = make_fabric(cfg.runtime)
    module, codec = load_hf_model(cfg.model)
    frame = run_regimes(module, codec, build_suite(cfg.tasks), cfg, fabric, log=log)
    if cfg.runtime.verbose:
        log(format_table(gain_drop_table(frame)))
    if cfg.runtime.run_dir is not None:
        write_metrics(frame, Path(cfg.runtime.run_dir) / "metrics.parquet")
    return frame


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m llm_reference.hf CONFIG [--out DIR]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="YAML HFRecipeConfig with model.path")
    ap.add_argument("--out", help="run folder for metrics.parquet (overrides runtime.run_dir)")
    args = ap.parse_args(argv)
    cfg = load_recipe_config(args.config)
    if not isinstance(cfg, HFRecipeConfig):
        raise SystemExit(f"{args.config} is not a Hugging Face recipe (it needs model.path)")
    if args.out:
        cfg = cfg.model_copy(
            update={"runtime": cfg.runtime.model_copy(update={"run_dir": args.out})}
        )
    run_hf_recipe(cfg)


if __name__ == "__main__":
    main()
