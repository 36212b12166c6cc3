"""Saved responses as a model: evaluate outputs produced elsewhere with the same parse, judge and metrics.

A replay file is JSON Lines, one row per (sample, variant): `{"sample_id", "variant", "response"}` with
optional `"letter_probs"` ({letter: p}; a row whose distribution is not one, e.g. all zeros, is that
record's error). A `records.jsonl` written by `vlmstress eval` is a valid replay file too: its
`score_source` and `error` fields are honoured.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.models.base import Generation
from vlmstress.perturb import Prompt

MISSING = "no saved response"


class ReplayModel:
    """Answers each prompt with the saved row for (prompt.sample_id, prompt.variant)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"replay:{path}"
        self._rows = load_replay(self.path)

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        # max_new_tokens cannot apply to text written already; it is accepted for the protocol.
        return [self._generation(p) for p in prompts]

    def _generation(self, prompt: Prompt) -> Generation:
        saved = self._rows.get((prompt.sample_id, prompt.variant))
        if saved is None:
            return Generation(text="", error=MISSING)
        # A fresh copy each time: callers may mutate what they get back.
        return Generation(
            text=saved.text,
            letter_probs=dict(saved.letter_probs) if saved.letter_probs is not None else None,
            score_source=saved.score_source,
            n_tokens=saved.n_tokens,
            error=saved.error,
        )


def load_replay(path: Path) -> dict[tuple[str, str], Generation]:
    """The rows of a replay file by (sample_id, variant); anything malformed is a UsageError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"replay file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read replay file {path}: {exc}") from None
    rows: dict[tuple[str, str], Generation] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            raise UsageError(f"{where}: not valid JSON") from None
        if not isinstance(row, dict):
            raise UsageError(f"{where}: a row must be a JSON object")
        key = (_id(row, "sample_id", where), _id(row, "variant", where))
        if key in rows:
            raise UsageError(f"{where}: a second row for sample {key[0]!r}, variant {key[1]!r}")
        rows[key] = _row_generation(row, where)
    if not rows:
        raise UsageError(f"replay file {path} has no rows")
    return rows


def _id(row: dict[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    # Ids written by other tools are often numbers; the contract makes every sample_id a string.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise UsageError(f"{where}: {field!r} must be a non-empty string")


def _row_generation(row: dict[str, Any], where: str) -> Generation:
    error = row.get("error")
    response = row.get("response")
    if error is not None:
        # A records.jsonl row that failed when it was produced stays a failure, not an empty answer.
        return Generation(text=response if isinstance(response, str) else "", error=str(error))
    if not isinstance(response, str):
        raise UsageError(f"{where}: 'response' must be a string")
    try:
        probs = _letter_probs(row.get("letter_probs"))
    except ValueError as exc:
        # A bad distribution is this row's fault, like a broken sample: its record says so and the
        # run goes on (left in, it would crash the metrics of every run that reads it).
        return Generation(text=response, error=f"replay row {where}: {exc}")
    source = row.get("score_source")
    if probs is None:
        source = None
    elif source not in ("generation", "forced"):
        source = "generation"
    n_tokens = row.get("n_tokens")
    return Generation(
        text=response,
        letter_probs=probs,
        score_source=source,
        n_tokens=n_tokens if isinstance(n_tokens, int) and not isinstance(n_tokens, bool) else 0,
    )


def _letter_probs(value: Any) -> dict[str, float] | None:
    """The row's distribution, or a ValueError saying why it is not one."""
    if value is None:
        return None
    bad = ValueError(
        "'letter_probs' must map option letters (A, B, ...) to probabilities in [0, 1], not all zero"
    )
    if not isinstance(value, dict) or not value:
        raise bad
    probs: dict[str, float] = {}
    for letter, p in value.items():
        ok_letter = isinstance(letter, str) and len(letter) == 1 and letter.isupper()
        ok_p = isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p <= 1
        if not (ok_letter and ok_p):
            raise bad
        probs[letter] = float(p)
    if sum(probs.values()) <= 0:
        raise bad
    return probs
