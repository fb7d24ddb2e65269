"""The LLM experiments as the project CLI runs them (``recsys-onpolicy run configs/llm/...``).

Each ``run_*_experiment(data, out, progress)`` takes the validated YAML mapping, writes its
artefacts into the run directory ``out`` and returns its metrics in the shared long schema; the
CLI then writes ``metrics.parquet`` and the report, exactly as for a recsys experiment.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from simulators.config import require_device
from simulators.typed_config import ConfigError, validate


def _seeds(data: dict) -> tuple[dict, int]:
    """``seeds`` (set by ``--seeds``) is the CLI's; the rest goes to the experiment's schema."""
    data = dict(data)
    seeds = data.pop("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds = {seeds!r}: give a whole number >= 1")
    return data, seeds


def _recipe_data(data: dict) -> dict:
    """The recipe's mapping with ``seeds: N`` (as ``--seeds N`` writes it) read as seeds
    0 .. N-1; a list of seeds is kept as it is."""
    data = dict(data)
    seeds = data.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds = {seeds}: give a whole number >= 1 or a list of seeds")
        data["seeds"] = list(range(seeds))
    return data


def validate_experiment(data: dict, source: str = "") -> None:
    """Raise ConfigError (naming the field) unless ``data`` is a valid LLM experiment."""
    if data["experiment"] == "mixture_toy":
        from llm_reference.mixture_toy import MixtureToyFile

        cfg = validate(MixtureToyFile, _seeds(data)[0], source=source)
        require_device("mixture_toy.device", cfg.mixture_toy.device, source, fix="'cpu'")
    else:
        from llm_reference.config import LMRecipeConfig

        cfg = validate(LMRecipeConfig, _recipe_data(data), source=source)
        require_device("runtime.accelerator", cfg.runtime.accelerator, source)


def run_mixture_toy_experiment(data: dict, out: Path, progress: bool = True) -> pl.DataFrame:
    """The Gaussian-mixture toy for seeds cfg.seed .. cfg.seed + seeds - 1, plus its figure."""
    from llm_reference.mixture_plot import plot_mixture_densities
    from llm_reference.mixture_toy import (
        MixtureToyFile,
        format_gain_drop_table,
        gain_drop_table,
        run_mixture_toy,
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
    return init_in_regime(frame)


def init_in_regime(frame: pl.DataFrame) -> pl.DataFrame:
    """The toy's runs as the project report reads runs: the initial policy (the toy's ``group``,
    bimodal / unimodal) becomes part of the regime (``bimodal/forward_kl_lr0.15_oldf0.005``) and
    ``group`` is null, so the Gain/Drop table and the curves get one line per run."""
    return frame.with_columns(
        regime=pl.when(pl.col("group").is_null()).then(pl.col("regime"))
        .otherwise(pl.col("group") + "/" + pl.col("regime")),
        group=pl.lit(None, dtype=pl.Utf8),
    )


def run_tiny_lm_experiment(data: dict, out: Path, progress: bool = True) -> pl.DataFrame:
    """The paper's recipe on the small LM world (all regimes x seeds); its metrics go to
    ``out/metrics.parquet``."""
    from llm_reference.config import LMRecipeConfig
    from llm_reference.recipe import run_recipe

    cfg = validate(LMRecipeConfig, _recipe_data(data))
    runtime = cfg.runtime.model_copy(
        update={"run_dir": str(out), "verbose": bool(progress and cfg.runtime.verbose)})
    return run_recipe(cfg.model_copy(update={"runtime": runtime}))
