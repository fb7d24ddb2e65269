"""The mixture toy's figure: the policy density over training, one panel per run.

Reads only the result frame of :func:`llm_reference.mixture_toy.run_mixture_toy` (the logged
``train/mean_k``, ``train/std_k``, ``train/weight_k`` give the density at every step) and the
config (target and grids). Each panel shows the target p* (dashed), the initial policy (grey),
a few intermediate steps (light to dark) and the policy at the stop step (bold).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import polars as pl
import torch

from llm_reference.mixture_toy import (
    DTYPE,
    MixtureToyConfig,
    TargetMixture,
    component_log_probs,
)


def policy_density(params: dict[str, float], grid: torch.Tensor) -> torch.Tensor:
    """q on the grid (G,) from one step's logged ``train/{mean,std,weight}_k`` values."""
    k_max = sum(1 for name in params if name.startswith("train/mean_"))
    def col(name: str) -> torch.Tensor:
        return torch.tensor([params[f"train/{name}_{k}"] for k in range(k_max)], dtype=DTYPE)
    return component_log_probs(grid, col("weight"), col("mean"), col("std")).exp().sum(1)


def plot_mixture_densities(frame: pl.DataFrame, cfg: MixtureToyConfig, path: str | Path,
                           n_intermediate: int = 3) -> Path:
    """Save a PNG with one panel per (init, regime) run in ``frame``; returns the path."""
    runs = frame.select("group", "regime").unique(maintain_order=True).rows()
    if not runs:
        raise ValueError("the frame holds no runs: nothing to plot")
    n_cols = min(3, len(runs))
    n_rows = math.ceil(len(runs) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.2 * n_rows), squeeze=False)
    target = TargetMixture(cfg.target, "cpu")
    for ax, (init, regime) in zip(axes.flat, runs):
        case = getattr(cfg, init)
        grid = torch.linspace(case.grid_min, case.grid_max, cfg.grid_points, dtype=DTYPE)
        run = frame.filter((pl.col("group") == init) & (pl.col("regime") == regime))
        wide = run.pivot(on="metric", index="step", values="value").sort("step")
        steps = wide["step"].to_list()
        last = steps[-1]
        picks = sorted({round(last * i / (n_intermediate + 1))
                        for i in range(1, n_intermediate + 1)} - {0, last})
        ax.plot(grid, target.log_prob(grid).exp(), "k--", lw=2, label="target p*")
        rows = {r["step"]: r for r in wide.iter_rows(named=True)}
        ax.plot(grid, policy_density(rows[0], grid), color="0.6", lw=2, label="step 0")
        cmap = plt.get_cmap("Reds" if regime.startswith("forward") else "Blues")
        for i, s in enumerate(picks):
            shade = 0.3 + 0.4 * i / max(1, len(picks))
            ax.plot(grid, policy_density(rows[s], grid), color=cmap(shade), lw=1.2,
                    label=f"step {s}")
        end = rows[last]
        ax.plot(grid, policy_density(end, grid), color=cmap(0.95), lw=2.5, label=f"step {last}")
        ax.set_title(f"{init} | {regime}\n"
                     f"Gain {end['target/gain']:.2f}  Drop {end['probe/drop']:.2f}", fontsize=9)
        ax.set_xlim(case.grid_min, case.grid_max)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
