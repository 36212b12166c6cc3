"""Answer extraction: an LLM reads a completion the rules could not parse and names the option it
gives as its answer, or "none" (design.md "Parsing").

It is asked only where parse.py found no letter, so it never overrides a rule parse, and only about
what follows the think: a model that never stated an answer has none, whatever its reasoning leaned
to. Its answer is the record's (parse_mode `extract`), counted in `extract_rate`. Whatever goes wrong
(the call raises, a Generation carries an error, the reply names no option) the extraction records
an `error` and the answer stays null: a failed extraction is never a guess. The machinery is the LLM
judge's (judge/llm.py): one `generate` call a batch, so the backend's concurrency and cache serve it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vlmstress.data.schema import Extraction, Prompt
from vlmstress.judge.llm import ask, lettered, named_option, reply_objects, text_prompt
from vlmstress.models.base import VLM, Generation

EXTRACT_PROMPT = """You read a model's response to a multiple-choice question and report which option \
it gives as its final answer.

Question: {question}
Options:
{options}

The model's response:
\"\"\"
{response}
\"\"\"

Which option does the response give as its final answer? Do not answer the question yourself: if \
the response states no final answer, or one that is none of the options, the answer is none.

Reply with one line of JSON and nothing else, in this form:
{{"answer": <option letter or "none">}}"""

# Only this much of a response's end is shown: an answer comes last, and the cap bounds the cost of
# a runaway completion.
RESPONSE_CAP = 4_000
# The error of a reply that names no option (its start is kept, to say what came back).
UNREADABLE = "unreadable reply: "


@dataclass(frozen=True)
class ExtractItem:
    """What an extractor reads: the question, the options as presented, and the response after
    its think (parse.after_think), where the rules looked for an answer and found none."""

    question: str
    options: tuple[str, ...]
    response: str


class Extractor(Protocol):
    name: str

    def extract(self, items: Sequence[ExtractItem]) -> list[Extraction]:
        """One extraction per item, in order; never raises for one bad item."""
        ...


class LLMExtractor:
    """Extractor with a VLM backend (text-only prompts). `name` is how extractions say who read."""

    def __init__(self, model: VLM, name: str, *, max_new_tokens: int = 512) -> None:
        self.model = model
        self.name = name
        # Room for a reasoning model to think before its one line of JSON (as the LLM judge).
        self.max_new_tokens = max_new_tokens

    def extract(self, items: Sequence[ExtractItem]) -> list[Extraction]:
        if not items:
            return []
        generations = ask(self.model, [extract_prompt(item) for item in items], self.max_new_tokens)
        return [self._extraction(item, g) for item, g in zip(items, generations, strict=True)]

    def _extraction(self, item: ExtractItem, generation: Generation) -> Extraction:
        if generation.error is not None:
            return Extraction(None, self.name, generation.error)
        read = parse_extraction(generation.text, item.options)
        if read is None:
            return Extraction(None, self.name, UNREADABLE + generation.text.strip()[:200])
        return Extraction(read[0], self.name)


def extract_prompt(item: ExtractItem) -> Prompt:
    user = EXTRACT_PROMPT.format(
        question=item.question.strip(),
        options=lettered(item.options),
        response=item.response.strip()[-RESPONSE_CAP:],
    )
    return text_prompt("extract", user)


def parse_extraction(text: str, options: Sequence[str]) -> tuple[str | None] | None:
    """(letter,) from an extractor's reply, (None,) for "none", or None when the reply names no
    option. The last object with an `answer` wins, since a model thinking aloud may quote the form."""
    for data in reply_objects(text):
        if "answer" not in data:
            continue
        named, letter = named_option(data["answer"], options)
        if named:
            return (letter,)
    return None
