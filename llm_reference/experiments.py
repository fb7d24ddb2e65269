"""The LLM experiments as the project CLI runs them (``recsys-onpolicy run configs/llm/...``).

Each ``run_*_experiment(data, out, progress)`` takes the validated YAML mapping, writes its
artefacts into the run directory ``out`` and returns its metrics in the shared long schema; the
CLI then writes ``metrics.parquet`` and the report, exactly as for a recsys experiment.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from simulators.typed_config import ConfigError, validate


def _seeds(data: dict) -> tuple[dict, int]:
    """``seeds`` (set by ``--seeds``) is the CLI's; the rest goes to the experiment's schema."""
    data = dict(data)
    seeds = int(data.pop("seeds", 1))
    if seeds < 1:
        raise ConfigError(f"seeds = {seeds}: must be >= 1")
    return data, seeds


def validate_experiment(data: dict, source: str = "") -> None:
    """Raise ConfigError (naming the field) unless ``data`` is a valid LLM experiment."""
    data, _ = _seeds(data)
    if data["experiment"] == "mixture_toy":
        from llm_reference.mixture_toy import MixtureToyFile

        validate(MixtureToyFile, data, source=source)
    else:
        from llm_reference.config import LMRecipeFile

        validate(LMRecipeFile, data, source=source)


def run_mixture_toy_experiment(data: dict, out: Path, progress: bool = True) -> pl.DataFrame:
    """The Gaussian-mixture toy for seeds cfg.seed .. cfg.seed + seeds - 1, plus its figure."""
    from llm_reference.mixture_plot import plot_mixture_densities
    from llm_reference.mixture_toy import (
        MixtureToyFile, format_gain_drop_table, gain_drop_table, run_mixture_toy,
    )

    data, seeds = _seeds(data)
    cfg = validate(MixtureToyFile, data).mixture_toy
    frames = []
    for seed in range(cfg.seed, cfg.seed + seeds):
        gen = torch.Generator(device=cfg.device)
        gen.manual_seed(seed)
        frames.append(run_mixture_toy(cfg, gen))
    frame = pl.concat(frames)
    first = frame.filter(pl.col("seed") == cfg.seed)
    plot_mixture_densities(first, cfg, out / "densities.png")
    (out / "gain_drop.txt").write_text(format_gain_drop_table(gain_drop_table(frame)) + "\n")
    return frame


def run_tiny_lm_experiment(data: dict, out: Path, progress: bool = True) -> pl.DataFrame:
    """The paper's recipe on the small LM world (all regimes x seeds)."""
    from llm_reference.config import LMRecipeFile
    from llm_reference.recipe import run_recipe

    data, seeds = _seeds(data)
    file = validate(LMRecipeFile, data)
    return run_recipe(file, out=out, seeds=seeds if "seeds" in data else None,
                      progress=progress)
