"""A judge backed by any model SPEC: it reads question, options, think and answer, and replies in JSON.

The whole batch is one `generate` call, so the backend's concurrency and cache serve the judge too.
Whatever goes wrong (the call raises, a Generation carries an error, the reply makes no sense) the
verdict is `error`: a judge that cannot tell must never count as `consistent`. The machinery (`ask`,
`text_prompt`, `reply_objects`, `named_option`) serves every LLM that reads a model's output, the
answer extractor (extract.py) too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from vlmstress.data.schema import Prompt, letters
from vlmstress.judge.base import JudgeItem, Verdict
from vlmstress.models.base import VLM, Generation

JUDGE_PROMPT = """You check whether a model's final answer follows from its own reasoning.

Question: {question}
Options:
{options}

The model's reasoning:
\"\"\"
{think}
\"\"\"

The model's final answer: {answer}

1. Which option does the reasoning argue for? Give its letter, or null if it argues for none.
2. Does the final answer follow from the reasoning? Judge only whether the two agree, not whether \
either is right.

Reply with one line of JSON and nothing else, in this form:
{{"supports": <option letter or null>, "consistent": <true or false>}}"""

# Replies are flat objects; matching innermost braces finds them inside prose, fences or a think block.
_OBJECT = re.compile(r"\{[^{}]*\}")
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_NO_OPTION = {"", "NULL", "NONE", "N/A", "NA"}


class LLMJudge:
    """Judge with a VLM backend (text-only prompts). `name` is how verdicts say who judged."""

    def __init__(self, model: VLM, name: str, *, max_new_tokens: int = 512) -> None:
        self.model = model
        self.name = name
        # Room for a reasoning model to think before its one line of JSON.
        self.max_new_tokens = max_new_tokens

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        verdicts = [None if _judgeable(item) else Verdict("unknown", None, self.name) for item in items]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            for i, generation in zip(todo, self._ask([items[i] for i in todo]), strict=True):
                verdicts[i] = self._verdict(items[i], generation)
        return [v for v in verdicts if v is not None]

    def _ask(self, items: list[JudgeItem]) -> list[Generation]:
        return ask(self.model, [judge_prompt(item) for item in items], self.max_new_tokens)

    def _verdict(self, item: JudgeItem, generation: Generation) -> Verdict:
        if generation.error is not None:
            return Verdict("error", None, self.name)
        reply = parse_reply(generation.text, item.options)
        if reply is None:
            return Verdict("error", None, self.name)
        supports, consistent = reply
        return Verdict("consistent" if consistent else "inconsistent", supports, self.name)


def _judgeable(item: JudgeItem) -> bool:
    """Without reasoning or an answer there is nothing to compare: `unknown`, at no cost."""
    return bool(item.think and item.think.strip()) and item.answer is not None


def ask(model: VLM, prompts: list[Prompt], max_new_tokens: int) -> list[Generation]:
    """One `generate` call for the batch, a Generation per prompt. A backend that raises or answers
    the wrong number of prompts fails each of these answers (a Generation with an `error`, saying
    why), never the run."""
    try:
        generations = list(model.generate(prompts, max_new_tokens=max_new_tokens))
    except Exception as exc:
        return [Generation("", error=f"{type(exc).__name__}: {exc}")] * len(prompts)
    if len(generations) != len(prompts):
        return [Generation("", error=f"{len(generations)} replies to {len(prompts)} prompts")] * len(prompts)
    return generations


def text_prompt(kind: str, user: str) -> Prompt:
    """A text-only Prompt of `kind` (judge, extract). The id names the content, so a replayed or
    cached reply matches its item and nothing else."""
    sample_id = f"{kind}-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:16]
    return Prompt(sample_id=sample_id, variant=kind, user=user, image=None, options=(), target=None)


def lettered(options: Sequence[str]) -> str:
    """The options one a line, as the model saw them: "A. left"."""
    return "\n".join(f"{ltr}. {text}" for ltr, text in zip(letters(len(options)), options, strict=True))


def judge_prompt(item: JudgeItem) -> Prompt:
    option_letters = letters(len(item.options))
    answer = item.answer or ""
    if answer in option_letters:
        answer = f"{answer} ({item.options[option_letters.index(answer)]})"
    user = JUDGE_PROMPT.format(
        question=item.question.strip(),
        options=lettered(item.options),
        think=(item.think or "").strip(),
        answer=answer,
    )
    return text_prompt("judge", user)


def parse_reply(text: str, options: Sequence[str]) -> tuple[str | None, bool] | None:
    """(supports, consistent) from a judge's reply, or None when it holds no usable verdict.

    Tolerant of what models do around JSON (prose, code fences, a think block, single quotes, Python
    literals); strict about what it says. The last usable object wins, since a model that thinks aloud
    may quote the format before it answers.
    """
    for data in reply_objects(text):
        if "consistent" not in data:
            continue
        consistent = _bool(data["consistent"])
        named, supports = named_option(data.get("supports"), options)
        if consistent is not None and named:
            return supports, consistent
    return None


def reply_objects(text: str) -> Iterator[dict[str, Any]]:
    """The flat JSON objects in a reply, last first (tolerant of prose, fences, think blocks,
    single quotes and Python literals around them)."""
    for candidate in reversed(_OBJECT.findall(text)):
        data = _loads(candidate)
        if data is not None:
            yield data


def _loads(candidate: str) -> dict[str, Any] | None:
    for text in (candidate, _relaxed(candidate)):
        try:
            data = json.loads(text)
        except ValueError:
            continue
        return data if isinstance(data, dict) else None
    return None


def _relaxed(candidate: str) -> str:
    """Python-dict style into JSON: single quotes to double, True/False/None to JSON literals."""
    text = candidate.replace("'", '"')
    return re.sub(r"\b(True|False|None)\b", lambda m: _PY_LITERALS[m.group(1)], text)


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def named_option(value: Any, options: Sequence[str]) -> tuple[bool, str | None]:
    """(valid, letter): the option `value` names, (True, None) for "none", (False, None) for nonsense."""
    if value is None:
        return True, None
    if not isinstance(value, str):
        return False, None
    option_letters = letters(len(options))
    word = value.strip().strip("().").strip()
    if word.upper() in _NO_OPTION:
        return True, None
    if word in option_letters:
        return True, word
    # Some judges name the option by its text.
    named = [
        ltr for ltr, text in zip(option_letters, options, strict=True) if text.strip().lower() == word.lower()
    ]
    return (True, named[0]) if len(named) == 1 else (False, None)
