"""Procedural tasks: hand-checked answers, the countdown verifier, teacher style, splits."""

import pytest
import torch

from llm_reference.config import TaskConfig
from llm_reference.tasks import (
    Addition,
    Copying,
    Countdown,
    Reversal,
    Sorting,
    build_suite,
    make_task,
    problem_key,
    split_of,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_countdown_answers_by_hand():
    cd = Countdown()
    assert cd.parse("N357=1:") == ([3, 5, 7], 1)
    assert cd.solutions("N357=1:") == ["3+5-7"]
    assert cd.answer("N357=1:") == "3+5-7"
    assert cd.teacher_answer("N357=1:") == "5+3-7"
    # 4+4-4 = 4 and 4-4+4 = 4: the first in '+'-before-'-' order is the base style
    assert cd.solutions("N444=4:") == ["4+4-4", "4-4+4"]
    assert cd.answer("N444=4:") == "4+4-4"
    assert cd.teacher_answer("N444=4:") == "4+4-4"
    assert cd.teacher_answer("N291=10:") == "9+2-1"  # 2+9-1 in prompt order


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("3+5-7", 1.0),
        ("5+3-7", 1.0),
        ("5-7+3", 1.0),
        ("3+5+7", 0.0),  # value 15
        ("3+5-5", 0.0),  # uses 5 twice, no 7
        ("3+5", 0.0),  # misses a number
        ("-7+3+5", 0.0),  # leading sign
        ("3 + 5 - 7", 0.0),  # not the format
        ("35-7", 0.0),  # multi-digit term
        ("", 0.0),
        (None, 0.0),  # no EOS within the budget
    ],
)
def test_countdown_verifier(completion, reward):
    assert Countdown().reward("N357=1:", completion) == reward


def test_drawn_countdown_prompts_are_solvable_in_both_styles():
    cd = Countdown(n_numbers=4, max_number=9)
    prompts = cd.draw(400, gen())
    assert len(prompts) > 100
    differ = 0
    for p in prompts:
        nums, target = cd.parse(p)
        assert len(nums) == 4 and target >= 1 and all(1 <= x <= 9 for x in nums)
        assert cd.reward(p, cd.answer(p)) == 1.0
        assert cd.reward(p, cd.teacher_answer(p)) == 1.0
        differ += cd.answer(p) != cd.teacher_answer(p)
    assert differ > 0.5 * len(prompts)  # the teacher's style is mostly not the base style


@pytest.mark.parametrize(
    "task, prompt, answer",
    [
        (Addition(2), "A12+34:", "46"),
        (Addition(2), "A99+9:", "108"),
        (Reversal(), "R4172:", "2714"),
        (Sorting(), "S4172:", "1247"),
        (Copying(), "C4172:", "4172"),
    ],
)
def test_exact_match_tasks_by_hand(task, prompt, answer):
    assert task.answer(prompt) == answer
    assert task.reward(prompt, answer) == 1.0
    assert task.reward(prompt, answer + "0") == 0.0
    assert task.reward(prompt, None) == 0.0


def test_draws_respect_ranges():
    for p in Addition(2).draw(200, gen()):
        a, b = p[1:-1].split("+")
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
    lengths = {len(p) - 2 for p in Reversal(3, 5).draw(300, gen())}
    assert lengths == {3, 4, 5}


def test_split_is_a_deterministic_hash_with_the_right_share():
    prompts = Copying(5, 5).draw(4000, gen())
    share = sum(split_of(p, 0.2) == "eval" for p in prompts) / len(prompts)
    assert 0.17 < share < 0.23
    assert all(split_of(p, 0.2) == split_of(p, 0.2) for p in prompts[:50])
    train = Copying(5, 5).sample_prompts(50, gen(), "train", 0.2)
    assert all(split_of(p, 0.2) == "train" for p in train)


def test_reorderings_of_a_held_out_problem_are_held_out_too():
    """A countdown problem is its numbers and target: N357=1 and N537=1 (same numbers, same
    target) fall in the same split, so training never shows a reordered eval problem; the same
    for addition's operands and sorting's digits."""
    import itertools

    assert problem_key("N735=1:") == problem_key("N357=1:") == "N357=1"
    assert problem_key("A34+12:") == problem_key("A12+34:") and problem_key("R12:") == "R12:"
    for prompt in Countdown().draw(300, gen()) + Sorting(3, 4).draw(300, gen(1)):
        body, rest = prompt[1:-1], ""
        if "=" in body:
            body, rest = body.split("=")
            rest = "=" + rest
        splits = {split_of(f"{prompt[0]}{''.join(p)}{rest}:", 0.2)
                  for p in itertools.permutations(body)}
        assert len(splits) == 1, prompt
    suite = build_suite(TaskConfig(n_eval=40))
    held = {problem_key(p) for p in suite.eval_prompts["countdown"]}
    train = suite.target.sample_prompts(2000, gen(3), "train", suite.eval_share)
    assert held and not held & {problem_key(p) for p in train}


def test_suite_eval_sets_are_fixed_unique_and_held_out():
    cfg = TaskConfig(n_eval=40)
    a, b = build_suite(cfg), build_suite(cfg)
    assert a.eval_prompts == b.eval_prompts
    assert [t.name for t in a.tasks] == ["countdown", "addition", "reversal", "sorting", "copying"]
    for prompts in a.eval_prompts.values():
        assert len(set(prompts)) == 40
        assert all(split_of(p, cfg.eval_share) == "eval" for p in prompts)
    assert a.task_of("S123:").name == "sorting"
    with pytest.raises(ValueError, match="belongs to no task"):
        a.task_of("Z1:")


def test_too_small_problem_space_is_a_clear_error():
    with pytest.raises(ValueError, match="problem space is too small"):
        build_suite(TaskConfig(countdown_numbers=2, countdown_max=2, n_eval=50))


def test_unknown_task_name():
    with pytest.raises(ValueError, match="unknown task 'parity'"):
        make_task("parity", TaskConfig())
