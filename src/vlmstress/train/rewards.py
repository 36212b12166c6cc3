"""GRPO rewards as plain functions in TRL's reward signature `f(prompts, completions, **columns)`.

TRL calls each function with the batch's prompts, completions and every other dataset column as a
keyword list (`target`, `options`, `question`, ...), and expects one float per completion. The same
functions serve verl through `verl_compute_score`, which adapts verl's one-completion signature.

The assistant turn a reward judges is *prefill + completion*: with a think prefill (augmentation's
correct_think / wrong_think) the prompt's final assistant message holds the opening of the turn and
the model writes only the rest, so format, answer and think are read from both together, exactly
as the evaluation runner parses `prompt.prefill + generation`.
"""

from __future__ import annotations

import importlib
import inspect
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.judge.base import Judge, JudgeItem
from vlmstress.parse import parse
from vlmstress.registry import Registry

RewardFn = Callable[..., list[float]]


def _nameable(name: str) -> str | None:
    return "cannot hold ':' (kept for module:function)" if ":" in name else None


# The rewards a GRPO config names (`rewards: [{fn: NAME, weight: W}]`); users add theirs with
# register_reward, or name any importable function as `module:function`.
REWARDS: Registry[RewardFn] = Registry("reward", check_name=_nameable, hint="or module:function")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Add a reward under `name`. A name already taken is a ValueError: replacing a reward would
    change what every config that names it trains."""
    return REWARDS.register(name)


def resolve_reward(name: str) -> RewardFn:
    """The reward a config names: a registered name, or `module:function` of an importable module.
    Anything else is a UsageError (a ValueError, so a config validator can raise it as is)."""
    module_name, sep, attr = name.partition(":")
    if not sep:
        return REWARDS.lookup(name)
    try:
        module = importlib.import_module(module_name.strip())
    except Exception as exc:  # the user's module: a missing one, or one that fails as it loads
        raise UsageError(
            f"reward {name!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from None
    fn = getattr(module, attr.strip(), None)
    # A plain Python function, as every reward is: a config must not name a builtin such as
    # os.system, nor a class to construct.
    if not inspect.isfunction(fn):
        raise UsageError(f"reward {name!r}: {module_name} has no function {attr!r}")
    return fn


# One think block, then one answer block, nothing else but whitespace around them; both non-empty.
_WELL_FORMED = re.compile(
    r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL
)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Without an `options` column, letters still parse: each letter stands for itself.
_ALL_LETTERS = tuple(string.ascii_uppercase)


def message_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def completion_text(completion: Any) -> str:
    """A completion as text: plain strings as they are; conversational ones (a list of messages)
    joined over their assistant messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(
            message_text(m.get("content"))
            for m in completion
            if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"
        )
    return ""


def prefill_text(prompt: Any) -> str:
    """The assistant prefill a conversational prompt ends with ("" for a plain-text prompt, whose
    prefill is already part of the text the model continued)."""
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt:
        last = prompt[-1]
        if isinstance(last, Mapping) and last.get("role") == "assistant":
            return message_text(last.get("content"))
    return ""


def assistant_turns(prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
    """prefill + completion for each pair: the whole assistant turn."""
    return [prefill_text(p) + completion_text(c) for p, c in zip(prompts, completions, strict=True)]


def _column(columns: Mapping[str, Any], name: str, n: int) -> list[Any]:
    value = columns.get(name)
    return list(value) if value is not None else [None] * n


def is_well_formed(turn: str) -> bool:
    """`<think>…</think><answer>…</answer>`: each tag exactly once, in that order, both non-empty."""
    m = _WELL_FORMED.fullmatch(turn)
    if m is None or any(turn.count(tag) != 1 for tag in _TAGS):
        return False
    return bool(m.group("think").strip()) and bool(m.group("answer").strip())


@register_reward("format")
def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the assistant turn is well formed (see is_well_formed), else 0.0."""
    return [1.0 if is_well_formed(turn) else 0.0 for turn in assistant_turns(prompts, completions)]


@register_reward("accuracy")
def accuracy_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the parsed answer letter equals the `target` column, else 0.0 (unparsed is wrong).

    Parsing is the evaluation's own (`vlmstress.parse.parse`), given the `options` column when the
    dataset has one, so a reward and a measured accuracy never disagree on what was answered.
    """
    turns = assistant_turns(prompts, completions)
    targets = _column(columns, "target", len(turns))
    options = _column(columns, "options", len(turns))
    out = []
    for turn, target, opts in zip(turns, targets, options, strict=True):
        answer = parse(turn, tuple(opts) if opts else _ALL_LETTERS).answer
        out.append(1.0 if target is not None and answer == target else 0.0)
    return out


def judge_items(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[JudgeItem]:
    """What a consistency judge reads for each completion: question, options, think and answer."""
    turns = assistant_turns(prompts, completions)
    questions = _column(columns, "question", len(turns))
    options = _column(columns, "options", len(turns))
    items = []
    for turn, question, opts in zip(turns, questions, options, strict=True):
        opts = tuple(opts) if opts else _ALL_LETTERS
        parsed = parse(turn, opts)
        items.append(JudgeItem(question or "", opts, parsed.think, parsed.answer))
    return items


def faithful(reward_fn: RewardFn, judge: Judge | str = "rule") -> RewardFn:
    """R x 1[judge says consistent]: the reward counts only when the think supports the answer.

    `judge` is a Judge or a judge SPEC (`rule`, or any model SPEC, loaded once here through the
    registry). `unknown` and `error` verdicts give 0: an answer the judge cannot tie to its think
    earns nothing, so the policy cannot collect the reward by reasoning the judge cannot read.
    """
    if isinstance(judge, str):
        from vlmstress.models.registry import load_judge

        judge = load_judge(judge)

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        base = reward_fn(prompts, completions, **columns)
        verdicts = judge.judge(judge_items(prompts, completions, **columns))
        return [r * (1.0 if v.verdict == "consistent" else 0.0) for r, v in zip(base, verdicts, strict=True)]

    # TRL logs each reward under its function's __name__ (rewards/<name>/mean).
    reward.__name__ = f"faithful_{getattr(reward_fn, '__name__', 'reward')}"
    reward.__qualname__ = reward.__name__
    return reward


def weighted_total(
    funcs: Sequence[RewardFn],
    weights: Sequence[float],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    **columns: Any,
) -> list[float]:
    """sum_i w_i f_i per completion: what TRL's GRPOTrainer adds up (with `reward_weights`) before
    computing advantages; the dynamics callback reports it for evaluation completions."""
    totals = [0.0] * len(completions)
    for fn, w in zip(funcs, weights, strict=True):
        for i, r in enumerate(fn(prompts, completions, **columns)):
            totals[i] += w * r
    return totals


def verl_compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Mapping[str, Any] | None = None
) -> float:
    """verl's `custom_reward_function` signature, with the paper's reward 0.1 x format + 1.0 x accuracy.

    `extra_info` may carry `options`, `question`, `prefill` (the assistant prefill, when the prompt
    had one) and `faithful: true` (then the rule judge gates the whole reward).
    """
    info = dict(extra_info or {})
    prompts = [[{"role": "assistant", "content": info.get("prefill") or ""}]]
    columns = {"target": [ground_truth], "options": [info.get("options")], "question": [info.get("question")]}
    funcs: list[RewardFn] = [format_reward, accuracy_reward]
    if info.get("faithful"):
        funcs = [faithful(f) for f in funcs]
    return weighted_total(funcs, [0.1, 1.0], prompts, [solution_str], **columns)[0]
