"""Pretraining: makes the base model pi_0 of the small LM world, cached by a hash of its config.

The data is the non-target mixture (addition, reversal, sorting, copying in equal shares) plus
a ``target_share`` of countdown prompts with their base-style answers, all from the training
split. The model learns the non-target tasks well and solves only part of the target prompts,
so post-training has reward to work with and the base policy is multi-modal (several tasks, and
within countdown a learned style).

The loss is the mean next-token cross-entropy over answer tokens (EOS included); prompts are
context only. AdamW, linear warmup then cosine decay.

The checkpoint lives in ``<cache_dir>/base-<hash>.pt`` where the hash covers the model shape,
the tasks (minus the evaluation set size and seed), pretraining and precision. It is written
atomically (``simulators.atomic.atomic_write``: temporary file, fsync, rename) and loaded
with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from lightning.fabric import Fabric

from llm_reference.config import LMRecipeConfig
from llm_reference.gpt import GPT
from llm_reference.sampling import Samples, answer_samples, completion_logprob
from llm_reference.tasks import TaskSuite
from llm_reference.tokenizer import CharTokenizer
from simulators.atomic import atomic_write

FORMAT_VERSION = 2  # 2: the held-out split is by problem (tasks.problem_key), not by prompt
"""Bump when the data or the model code changes in a way that makes cached bases stale."""


def pretrain_batch(
    suite: TaskSuite, codec: CharTokenizer, n: int, target_share: float, gen: torch.Generator
) -> Samples:
    """``n`` training-split (prompt, base-style answer) pairs: countdown with probability
    ``target_share``, otherwise a uniformly chosen non-target task."""
    is_target = torch.rand(n, generator=gen) < target_share  # (n,)
    which = torch.randint(0, len(suite.non_target), (n,), generator=gen)  # (n,)
    counts: dict[int, int] = {}
    for t, w in zip(is_target.tolist(), which.tolist()):
        k = -1 if t else w
        counts[k] = counts.get(k, 0) + 1
    prompts, answers = [], []
    for k in sorted(counts):
        task = suite.target if k == -1 else suite.non_target[k]
        ps = suite.train_prompts(task, counts[k], gen)
        prompts += ps
        answers += [task.answer(p) for p in ps]
    return answer_samples(codec, prompts, answers)


def lr_at(step: int, cfg) -> float:
    """Learning rate at update ``step`` (0-based): linear warmup, cosine to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def base_hash(cfg: LMRecipeConfig) -> str:
    """Hash of everything that shapes the base model."""
    tasks = cfg.tasks.model_dump(exclude={"n_eval", "eval_seed"})
    key = {
        "version": FORMAT_VERSION,
        "model": cfg.model.model_dump(),
        "tasks": tasks,
        "pretrain": cfg.pretrain.model_dump(),
        "precision": cfg.runtime.precision,
        "alphabet": CharTokenizer().alphabet,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def pretrain(cfg: LMRecipeConfig, suite: TaskSuite, fabric: Fabric, log=print) -> GPT:
    """Train a fresh GPT on the pretraining mixture and return it (on the fabric's device)."""
    p = cfg.pretrain
    codec = CharTokenizer()
    gen = torch.Generator().manual_seed(p.seed)
    model = GPT(cfg.model, codec.vocab_size, generator=gen)
    opt = torch.optim.AdamW(
        model.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=(0.9, 0.99)
    )
    module, opt = fabric.setup(model, opt)
    for step in range(p.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, p)
        batch = pretrain_batch(suite, codec, p.batch_size, p.target_share, gen)
        n_tokens = sum(len(c) for c in batch.completion_ids)
        loss = -completion_logprob(module, codec, batch, fabric.device).sum() / n_tokens
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        fabric.clip_gradients(module, opt, max_norm=1.0)
        opt.step()
        if cfg.runtime.verbose and (step % max(1, p.steps // 10) == 0 or step == p.steps - 1):
            log(f"pretrain step {step:5d}  loss {loss.item():.4f}")
    return model


def load_or_pretrain(
    cfg: LMRecipeConfig, suite: TaskSuite, fabric: Fabric, log=print
) -> tuple[GPT, Path, bool]:
    """The base model: loaded from the cache when its hash is there, else pretrained and saved.

    Returns (model on the fabric's device, checkpoint path, whether it came from the cache).
    """
    path = cfg.runtime.resolved_cache_dir() / f"base-{base_hash(cfg)}.pt"
    codec = CharTokenizer()
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = GPT(cfg.model, codec.vocab_size)
        model.load_state_dict(blob["state_dict"])
        return model.to(fabric.device), path, True
    model = pretrain(cfg, suite, fabric, log=log)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"state_dict": state, "hash": base_hash(cfg), "n_params": model.n_params()}
    atomic_write(path, lambda fh: torch.save(blob, fh))
    return model, path, False
