"""The paper's recipe on the small LM world: every regime x seed from one base model, Gain/Drop.

``run_recipe(cfg)`` pretrains (or loads from the cache) the base model, measures it once, then
for each seed and preset copies the base, post-trains it and measures it on the evaluation
schedule. It returns a polars frame in the shared long schema
(:mod:`recsys_onpolicy.results`) with ``domain="llm"``, ``regime=<preset>``:

================== ========== ===================================================================
metric             group      meaning
================== ========== ===================================================================
target/accuracy    countdown  greedy exact-verifier accuracy on held-out target prompts
probe/accuracy     <task>     greedy accuracy on each non-target task's held-out prompts
target/gain        null       target accuracy now - before post-training
probe/drop         null       mean over non-target tasks of (accuracy before - now)
probe/kl_to_base   null       KL(pi_0 || pi) on held-out target prompts, nats (sampling.kl_to_base)
train/loss         null       loss of the update at this step (also train/reward,
                              train/kept_fraction, train/kl_penalty where a regime has them)
train/wall_seconds null       wall time of the run (last step only)
================== ========== ===================================================================

Step 0 is the base model (the same rows for every regime and seed). It prints a Gain/Drop table:
the last step of each run, mean and t-based 95% interval over seeds.

:func:`lr_sweep` runs chosen presets at several learning rates (the Gain/Drop frontier);
``python -m llm_reference.recipe CONFIG`` runs a config file.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch
from lightning.fabric import Fabric
from scipy import stats

from llm_reference.config import LMRecipeConfig, RecipeBase, RuntimeConfig, load_recipe_config
from llm_reference.pretrain import load_or_pretrain
from llm_reference.regimes import REGIMES, RunContext, Traces
from llm_reference.sampling import LanguageModel, TokenCodec, greedy_accuracy, kl_to_base
from llm_reference.tasks import TaskSuite, build_suite
from llm_reference.tokenizer import CharTokenizer
from recsys_onpolicy.results import metric_rows, to_frame, write_metrics

Values = dict[tuple[str, str | None], float]
"""(metric, group) -> value."""


def make_fabric(runtime: RuntimeConfig) -> Fabric:
    """A single-device Fabric with the configured accelerator and precision; sets CPU threads."""
    torch.set_num_threads(runtime.threads)
    return Fabric(accelerator=runtime.accelerator, devices=1, precision=runtime.precision)


def evaluate(
    policy: LanguageModel,
    base: LanguageModel,
    codec: TokenCodec,
    suite: TaskSuite,
    cfg: RecipeBase,
    device: torch.device,
) -> Values:
    """Greedy accuracy per task and KL(pi_0 || pi) on held-out target prompts.

    The KL samples come from a generator seeded with ``tasks.eval_seed`` at every call, so all
    runs and steps are measured on the same pi_0 samples (common random numbers).
    """
    max_new = cfg.regime.max_new_tokens
    out: Values = {}
    for task in suite.tasks:
        acc = greedy_accuracy(
            policy,
            codec,
            suite.eval_prompts[task.name],
            task.reward,
            max_new_tokens=max_new,
            device=device,
            max_batch=cfg.runtime.max_batch,
        )
        out[("target/accuracy" if task is suite.target else "probe/accuracy", task.name)] = acc
    kl_prompts = suite.eval_prompts[suite.target.name][: cfg.eval.kl_prompts]
    out[("probe/kl_to_base", None)] = kl_to_base(
        policy,
        base,
        codec,
        kl_prompts,
        n_samples=cfg.eval.kl_samples,
        max_new_tokens=max_new,
        gen=torch.Generator().manual_seed(cfg.tasks.eval_seed),
        device=device,
        max_batch=cfg.runtime.max_batch,
    )
    return out


def gain_and_drop(now: Values, before: Values, suite: TaskSuite) -> Values:
    """Gain = target accuracy now - before; Drop = mean over non-target tasks of before - now."""
    t = suite.target.name
    gain = now[("target/accuracy", t)] - before[("target/accuracy", t)]
    drops = [
        before[("probe/accuracy", k.name)] - now[("probe/accuracy", k.name)]
        for k in suite.non_target
    ]
    return {("target/gain", None): gain, ("probe/drop", None): sum(drops) / len(drops)}


def _rows(
    experiment: str, regime: str, seed: int, step: int, values: Values, domain: str = "llm"
) -> list[dict]:
    rows = []
    for (metric, group), v in values.items():
        rows += metric_rows(
            domain=domain,
            experiment=experiment,
            regime=regime,
            seed=seed,
            step=step,
            values={metric: v},
            group=group,
        )
    return rows


def _run_order(presets: Sequence[str]) -> list[str]:
    """Presets in config order, except that grpo runs before sft_on_rl_traces (which reuses it)."""
    order = list(presets)
    if (
        "grpo" in order
        and "sft_on_rl_traces" in order
        and order.index("grpo") > order.index("sft_on_rl_traces")
    ):
        order.remove("grpo")
        order.insert(order.index("sft_on_rl_traces"), "grpo")
    return order


def run_regimes(
    base: torch.nn.Module,
    codec: TokenCodec,
    suite: TaskSuite,
    cfg: RecipeBase,
    fabric: Fabric,
    log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """Post-train copies of ``base`` with every preset and seed of ``cfg``; the long frame.

    ``base`` is any module with ``forward(tokens, mask, positions) -> logits`` (the GPT, or the
    Hugging Face adapter); it is never modified.
    """
    say = log if cfg.runtime.verbose else (lambda _msg: None)
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    ref_lm = fabric.setup_module(ref)
    before = evaluate(ref_lm, ref_lm, codec, suite, cfg, fabric.device)
    say(
        "base: "
        + ", ".join(f"{m}[{g}]={v:.3f}" if g else f"{m}={v:.3f}" for (m, g), v in before.items())
    )
    rows: list[dict] = []
    traces: dict[int, Traces] = {}
    for seed in cfg.seeds:
        for preset in _run_order(cfg.regimes):
            if preset == "sft_on_rl_traces" and seed not in traces:
                say(f"seed {seed}: running grpo to collect traces for sft_on_rl_traces")
                _, traces[seed] = _run_one(
                    "grpo", seed, base, ref_lm, codec, suite, cfg, fabric, before
                )
            t0 = time.perf_counter()
            run_rows, out = _run_one(
                preset,
                seed,
                base,
                ref_lm,
                codec,
                suite,
                cfg,
                fabric,
                before,
                traces=traces.get(seed),
            )
            if preset == "grpo":
                traces[seed] = out
            last = max(r["step"] for r in run_rows)
            wall = time.perf_counter() - t0
            run_rows += _rows(
                cfg.experiment, preset, seed, last, {("train/wall_seconds", None): wall}
            )
            rows += run_rows
            final = {
                r["metric"]: r["value"]
                for r in run_rows
                if r["step"] == last and r["group"] is None
            }
            say(
                f"seed {seed} {preset:17s} gain {final['target/gain']:+.3f}  "
                f"drop {final['probe/drop']:+.3f}  kl {final['probe/kl_to_base']:.3f}  "
                f"({wall:.1f}s)"
            )
    return to_frame(rows)


def _run_one(
    preset: str,
    seed: int,
    base: torch.nn.Module,
    ref_lm: LanguageModel,
    codec: TokenCodec,
    suite: TaskSuite,
    cfg: RecipeBase,
    fabric: Fabric,
    before: Values,
    traces: Traces | None = None,
) -> tuple[list[dict], Traces | None]:
    """One post-training run: its rows (step 0 = ``before``) and the regime's output."""
    rcfg = cfg.regime_config(preset)
    fabric.seed_everything(seed, verbose=False)
    # eval mode (dropout off) throughout: samples and log-probs come from one and the same policy
    model = copy.deepcopy(base).eval().requires_grad_(True)
    policy, opt = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=rcfg.lr))
    rows = _rows(
        cfg.experiment, preset, seed, 0, {**before, **gain_and_drop(before, before, suite)}
    )

    def log_step(step: int, values: dict[str, float]) -> None:
        rows.extend(
            _rows(cfg.experiment, preset, seed, step, {(k, None): v for k, v in values.items()})
        )
        if step == rcfg.steps or (cfg.eval.every and step % cfg.eval.every == 0):
            now = evaluate(policy, ref_lm, codec, suite, cfg, fabric.device)
            rows.extend(
                _rows(
                    cfg.experiment, preset, seed, step, {**now, **gain_and_drop(now, before, suite)}
                )
            )

    ctx = RunContext(
        policy=policy,
        ref=ref_lm,
        codec=codec,
        suite=suite,
        cfg=rcfg,
        fabric=fabric,
        optimizer=opt,
        gen=torch.Generator().manual_seed(seed),
        log_step=log_step,
        traces=traces,
        max_batch=cfg.runtime.max_batch,
    )
    out = REGIMES[preset](ctx)
    return rows, out


def _ci95(values: Sequence[float]) -> float:
    """Half-width of the t-based 95% interval of the mean (NaN with fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def gain_drop_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per regime: mean and 95% half-width over seeds of Gain, Drop and KL at each run's end."""
    evals = frame.filter(pl.col("metric").is_in(["target/gain", "probe/drop", "probe/kl_to_base"]))
    last = evals.group_by("regime", "seed").agg(pl.col("step").max().alias("last"))
    final = evals.join(last, on=["regime", "seed"]).filter(pl.col("step") == pl.col("last"))
    order = list(dict.fromkeys(frame["regime"].to_list()))
    out = []
    for regime in order:
        sub = final.filter(pl.col("regime") == regime)
        row: dict = {"regime": regime, "seeds": sub["seed"].n_unique()}
        for metric, name in (
            ("target/gain", "gain"),
            ("probe/drop", "drop"),
            ("probe/kl_to_base", "kl"),
        ):
            vals = sub.filter(pl.col("metric") == metric).sort("seed")["value"].to_list()
            row[name] = sum(vals) / len(vals) if vals else float("nan")
            row[f"{name}_ci95"] = _ci95(vals)
        out.append(row)
    return pl.DataFrame(out)


def format_table(table: pl.DataFrame) -> str:
    """The Gain/Drop table as text (accuracies in percentage points, KL in nats)."""
    w = max([6, *(len(r) for r in table["regime"].to_list())])
    lines = [
        f"{'regime':{w}s} {'seeds':>5s} {'gain (pp)':>16s} {'drop (pp)':>16s} {'KL(pi0||pi)':>16s}"
    ]
    for r in table.iter_rows(named=True):
        gain, drop, kl = _cell(r, "gain", 100), _cell(r, "drop", 100), _cell(r, "kl", 1)
        lines.append(f"{r['regime']:{w}s} {r['seeds']:5d} {gain:>16s} {drop:>16s} {kl:>16s}")
    return "\n".join(lines)


def _cell(row: dict, name: str, scale: float) -> str:
    """``mean ± half-width``; percentage points when ``scale`` is 100, else 3 decimals."""
    ci = row[f"{name}_ci95"]
    if scale != 1:
        ci_s = "   n/a" if math.isnan(ci) else f"{ci * scale:6.1f}"
        return f"{row[name] * scale:+7.1f} ±{ci_s}"
    ci_s = "   n/a" if math.isnan(ci) else f"{ci:6.3f}"
    return f"{row[name]:7.3f} ±{ci_s}"


def run_recipe(cfg: LMRecipeConfig, log: Callable[[str], None] = print) -> pl.DataFrame:
    """Base model (cached), then every preset x seed; prints the Gain/Drop table, writes
    ``<run_dir>/metrics.parquet`` when ``runtime.run_dir`` is set, returns the long frame."""
    say = log if cfg.runtime.verbose else (lambda _msg: None)
    fabric = make_fabric(cfg.runtime)
    suite = build_suite(cfg.tasks)
    t0 = time.perf_counter()
    base, path, cached = load_or_pretrain(cfg, suite, fabric, log=say)
    say(
        f"base model ({base.n_params():,} parameters) "
        f"{'loaded from' if cached else 'pretrained and saved to'} {path} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    frame = run_regimes(base, CharTokenizer(), suite, cfg, fabric, log=log)
    say(format_table(gain_drop_table(frame)))
    if cfg.runtime.run_dir is not None:
        write_metrics(frame, Path(cfg.runtime.run_dir) / "metrics.parquet")
    return frame


def lr_sweep(
    cfg: LMRecipeConfig,
    lrs: Sequence[float],
    regimes: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """Run ``regimes`` (default: the config's) at each learning rate; the regime column reads
    ``<preset>@lr=<lr>``, so :func:`gain_drop_table` of the result is the Gain/Drop frontier.

    All presets of one call share the learning rate (sft_on_rl_traces' GRPO traces included).
    """
    if not lrs:
        raise ValueError("lr_sweep needs at least one learning rate (lrs=[...])")
    presets = list(regimes or cfg.regimes)
    frames = []
    for lr in lrs:
        overrides = {p: {**cfg.overrides.get(p, {}), "lr": lr} for p in set(presets) | {"grpo"}}
        sub = cfg.model_copy(
            update={
                "regimes": presets,
                "overrides": overrides,
                "runtime": cfg.runtime.model_copy(update={"run_dir": None}),
            }
        )
        sub = LMRecipeConfig.model_validate(sub.model_dump())
        f = run_recipe(sub, log=log)
        frames.append(f.with_columns((pl.col("regime") + f"@lr={lr:g}").alias("regime")))
    out = pl.concat(frames, how="vertical")
    if cfg.runtime.run_dir is not None:
        write_metrics(out, Path(cfg.runtime.run_dir) / "metrics.parquet")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m llm_reference.recipe CONFIG [--out DIR] [--lrs 1e-4 1e-3 ...]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="YAML recipe, e.g. configs/llm/tiny_lm_recipe.yaml")
    ap.add_argument("--out", help="run folder for metrics.parquet (overrides runtime.run_dir)")
    ap.add_argument(
        "--lrs", type=float, nargs="*", help="run an lr sweep over these learning rates"
    )
    args = ap.parse_args(argv)
    cfg = load_recipe_config(args.config)
    if not isinstance(cfg, LMRecipeConfig):
        raise SystemExit(
            f"{args.config} is a Hugging Face recipe; run it with python -m llm_reference.hf"
        )
    if args.out:
        cfg = cfg.model_copy(
            update={"runtime": cfg.runtime.model_copy(update={"run_dir": args.out})}
        )
    if args.lrs:
        print(format_table(gain_drop_table(lr_sweep(cfg, args.lrs))))
    else:
        run_recipe(cfg)


if __name__ == "__main__":
    main()
