"""Procedural tasks with verifiable rewards in {0, 1}: one target task and the forgetting probes.

Every task writes a prompt ``<letter><arguments>:`` and an answer that ends with EOS:

=========== ====== ================ ===================== =========================================
task        letter prompt           answer (base style)   reward
=========== ====== ================ ===================== =========================================
countdown   N      ``N357=1:``      ``3+5-7``             verifier: each number once, + and -, value
addition    A      ``A12+34:``      ``46``                exact match
reversal    R      ``R4172:``       ``2714``              exact match
sorting     S      ``S4172:``       ``1247``              exact match
copying     C      ``C4172:``       ``4172``              exact match
=========== ====== ================ ===================== =========================================

Countdown is the target, in the spirit of the paper's Countdown: reach the number after ``=``
with the given single-digit numbers, each used once, joined by ``+`` and ``-`` (no leading sign).
Prompts are generated so that an answer keeping the prompt's order exists; the base model is
pretrained on that style (:meth:`Countdown.answer`). The *teacher* (the off-policy expert, like
the paper's 70B model) writes an equally valid answer in another style the base model never
sees: positive terms first, each group in descending order (``5+3-7``). On prompts where both
orders coincide the two styles agree.

Held-out split: a prompt belongs to the eval split when a hash of its *problem* falls below
``eval_share`` (:func:`problem_key`: countdown's multiset of numbers and target, addition's
unordered pair, sorting's multiset of digits, else the prompt), so neither an evaluation prompt
nor a reordering of it with the same answer set is seen in pretraining or post-training.
Every random draw takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import itertools
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from llm_reference.config import TaskConfig

Split = Literal["train", "eval"]


def problem_key(prompt: str) -> str:
    """The problem a prompt poses, the same for every ordering with the same solutions:
    ``N735=1:`` and ``N357=1:`` -> ``N357=1``; ``A34+12:`` -> ``A12+34``; ``S4172:`` ->
    ``S1247``; other prompts are their own key."""
    body = prompt[1:-1] if prompt.endswith(":") else prompt[1:]
    if prompt.startswith("N") and "=" in body:
        numbers, target = body.split("=", 1)
        return f"N{''.join(sorted(numbers))}={target}"
    if prompt.startswith("A") and "+" in body:
        a, b = body.split("+", 1)
        return "A" + "+".join(sorted((a, b), key=lambda x: (len(x), x)))
    if prompt.startswith("S"):
        return "S" + "".join(sorted(body))
    return prompt


def split_of(prompt: str, eval_share: float) -> Split:
    """'eval' when the CRC32 of the prompt's :func:`problem_key`, scaled to [0, 1), is below
    ``eval_share``."""
    return "eval" if zlib.crc32(problem_key(prompt).encode()) / 2**32 < eval_share else "train"


class Task(ABC):
    """A prompt generator with an answer in the base model's style and a 0/1 reward."""

    name: str
    letter: str

    @abstractmethod
    def draw(self, n: int, gen: torch.Generator) -> list[str]:
        """``n`` random prompts (either split)."""

    @abstractmethod
    def answer(self, prompt: str) -> str:
        """The answer in the style the base model is pretrained on."""

    def reward(self, prompt: str, completion: str | None) -> float:
        """1.0 for a correct completion, else 0.0; None (no EOS) scores 0. Default: exact match."""
        return float(completion is not None and completion == self.answer(prompt))

    def sample_prompts(
        self, n: int, gen: torch.Generator, split: Split, eval_share: float, unique: bool = False
    ) -> list[str]:
        """``n`` prompts of one split by rejection; ``unique`` forbids repeats (eval sets)."""
        out: list[str] = []
        seen: set[str] = set()
        for _ in range(200):
            for p in self.draw(max(16, 2 * n), gen):
                if split_of(p, eval_share) != split or (unique and p in seen):
                    continue
                seen.add(p)
                out.append(p)
                if len(out) == n:
                    return out
        raise ValueError(
            f"task {self.name}: could not draw {n} {'distinct ' if unique else ''}{split} prompts; "
            "the problem space is too small (lower tasks.n_eval or enlarge the task's ranges)"
        )


def _digits(n: int, lo: int, hi: int, gen: torch.Generator) -> list[str]:
    """``n`` random digit strings with lengths in [lo, hi]."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    digits = torch.randint(0, 10, (n, hi), generator=gen).tolist()
    return ["".join(map(str, row[:k])) for row, k in zip(digits, lengths)]


class Countdown(Task):
    """Target task: reach the target with each given number once, using + and -."""

    name = "countdown"
    letter = "N"
    _prompt = re.compile(r"^N(\d+)=(\d+):$")
    _expr = re.compile(r"^\d([+-]\d)*$")

    def __init__(self, n_numbers: int = 3, max_number: int = 9) -> None:
        if not 1 <= max_number <= 9:
            raise ValueError(
                f"countdown max_number = {max_number}: numbers must be single digits (1..9)"
            )
        self.n_numbers = n_numbers
        self.max_number = max_number

    def draw(self, n: int, gen: torch.Generator) -> list[str]:
        nums = torch.randint(1, self.max_number + 1, (n, self.n_numbers), generator=gen)  # (n, k)
        signs = torch.randint(0, 2, (n, self.n_numbers), generator=gen) * 2 - 1  # (n, k) in {-1, 1}
        signs[:, 0] = 1  # no leading sign
        targets = (nums * signs).sum(dim=1)  # (n,)
        keep = targets >= 1
        return [
            f"N{''.join(map(str, row))}={t}:"
            for row, t in zip(nums[keep].tolist(), targets[keep].tolist())
        ]

    def parse(self, prompt: str) -> tuple[list[int], int]:
        """(numbers, target) of a countdown prompt."""
        m = self._prompt.match(prompt)
        if m is None:
            raise ValueError(f"{prompt!r} is not a countdown prompt (expected like 'N357=1:')")
        return [int(c) for c in m.group(1)], int(m.group(2))

    def solutions(self, prompt: str) -> list[str]:
        """Every answer in prompt order (signs '+' before '-'), in enumeration order."""
        nums, target = self.parse(prompt)
        out = []
        for ops in itertools.product("+-", repeat=len(nums) - 1):
            value = nums[0] + sum(x if op == "+" else -x for op, x in zip(ops, nums[1:]))
            if value == target:
                out.append(str(nums[0]) + "".join(op + str(x) for op, x in zip(ops, nums[1:])))
        return out

    def answer(self, prompt: str) -> str:
        """Base style: the first solution that keeps the prompt's order."""
        sols = self.solutions(prompt)
        if not sols:
            raise ValueError(f"countdown prompt {prompt!r} has no solution in prompt order")
        return sols[0]

    def teacher_answer(self, prompt: str) -> str:
        """Teacher style: the same terms, positives first, each group in descending order."""
        terms = re.findall(r"[+-]?\d", "+" + self.answer(prompt))  # e.g. ['+3', '+5', '-7']
        pos = sorted((t[1] for t in terms if t[0] == "+"), reverse=True)
        neg = sorted((t[1] for t in terms if t[0] == "-"), reverse=True)
        return "+".join(pos) + "".join("-" + x for x in neg)

    def reward(self, prompt: str, completion: str | None) -> float:
        """1.0 when ``completion`` uses exactly the prompt's numbers and evaluates to the target."""
        if completion is None or not self._expr.match(completion):
            return 0.0
        nums, target = self.parse(prompt)
        terms = re.findall(r"[+-]?\d", completion)
        if sorted(int(t[-1]) for t in terms) != sorted(nums):
            return 0.0
        return float(sum(int(t) for t in terms) == target)


class Addition(Task):
    """``A<a>+<b>:`` -> the decimal sum."""

    name = "addition"
    letter = "A"

    def __init__(self, digits: int = 2) -> None:
        self.digits = digits

    def draw(self, n: int, gen: torch.Generator) -> list[str]:
        ab = torch.randint(0, 10**self.digits, (n, 2), generator=gen).tolist()
        return [f"A{a}+{b}:" for a, b in ab]

    def answer(self, prompt: str) -> str:
        a, b = prompt[1:-1].split("+")
        return str(int(a) + int(b))


class _StringTask(Task):
    """Tasks on a digit string: ``<letter><digits>:`` -> a function of the digits."""

    def __init__(self, min_len: int = 3, max_len: int = 5) -> None:
        self.min_len = min_len
        self.max_len = max_len

    def draw(self, n: int, gen: torch.Generator) -> list[str]:
        return [f"{self.letter}{s}:" for s in _digits(n, self.min_len, self.max_len, gen)]

    def answer(self, prompt: str) -> str:
        return self.transform(prompt[1:-1])

    @abstractmethod
    def transform(self, s: str) -> str:
        """The answer for digit string ``s``."""


class Reversal(_StringTask):
    """``R4172:`` -> ``2714``."""

    name = "reversal"
    letter = "R"

    def transform(self, s: str) -> str:
        return s[::-1]


class Sorting(_StringTask):
    """``S4172:`` -> ``1247``."""

    name = "sorting"
    letter = "S"

    def transform(self, s: str) -> str:
        return "".join(sorted(s))


class Copying(_StringTask):
    """``C4172:`` -> ``4172``."""

    name = "copying"
    letter = "C"

    def transform(self, s: str) -> str:
        return s


@dataclass
class TaskSuite:
    """The target task, the non-target tasks and their fixed held-out prompt sets."""

    target: Countdown
    non_target: list[Task]
    eval_prompts: dict[str, list[str]]
    eval_share: float

    @property
    def tasks(self) -> list[Task]:
        """Target first, then the non-target tasks."""
        return [self.target, *self.non_target]

    def task_of(self, prompt: str) -> Task:
        """The task that wrote ``prompt`` (by its first letter)."""
        for t in self.tasks:
            if prompt.startswith(t.letter):
                return t
        raise ValueError(f"prompt {prompt!r} belongs to no task of this suite")

    def train_prompts(self, task: Task, n: int, gen: torch.Generator) -> list[str]:
        """``n`` training-split prompts of ``task``."""
        return task.sample_prompts(n, gen, "train", self.eval_share)


def make_task(name: str, cfg: TaskConfig) -> Task:
    """The task called ``name`` with the sizes from ``cfg``."""
    if name == "countdown":
        return Countdown(cfg.countdown_numbers, cfg.countdown_max)
    if name == "addition":
        return Addition(cfg.addition_digits)
    strings = {"reversal": Reversal, "sorting": Sorting, "copying": Copying}
    if name in strings:
        return strings[name](cfg.string_min_len, cfg.string_max_len)
    raise ValueError(
        f"unknown task {name!r}; known: countdown, addition, reversal, sorting, copying"
    )


def build_suite(cfg: TaskConfig) -> TaskSuite:
    """The suite with held-out prompt sets drawn with ``cfg.eval_seed`` (same for every run)."""
    target = make_task("countdown", cfg)
    assert isinstance(target, Countdown)
    others = [make_task(n, cfg) for n in cfg.non_target]
    gen = torch.Generator().manual_seed(cfg.eval_seed)
    evals = {
        t.name: t.sample_prompts(cfg.n_eval, gen, "eval", cfg.eval_share, unique=True)
        for t in [target, *others]
    }
    return TaskSuite(
        target=target, non_target=others, eval_prompts=evals, eval_share=cfg.eval_share
    )
