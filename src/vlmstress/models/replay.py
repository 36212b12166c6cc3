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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from vlmstress.data.schema import Prompt
from vlmstress.errors import UsageError
from vlmstress.models.base import Generation

MISSING = "no saved response"
_LINE = 1 << 32  # a row's index entry: its byte offset * _LINE + its line number


class ReplayModel:
    """Answers each prompt with the saved row for (prompt.sample_id, prompt.variant).

    Every row is checked when the file is loaded, but only its byte offset is kept (by variant, then
    sample id): a row is read again from the file when its prompt comes, so a replay of 100k samples
    x 9 variants holds offsets, not 900k responses."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"replay:{path}"
        self._offsets = index_replay(self.path)
        self._file: BinaryIO | None = None

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        # max_new_tokens cannot apply to text written already; it is accepted for the protocol.
        return [self._generation(p) for p in prompts]

    def _generation(self, prompt: Prompt) -> Generation:
        code = self._offsets.get(prompt.variant, {}).get(prompt.sample_id)
        if code is None:
            return Generation(text="", error=MISSING)
        offset, number = divmod(code, _LINE)
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(offset)
        # A fresh Generation each time (callers may mutate what they get back), from the row as
        # loading checked it.
        return _row_generation(json.loads(self._file.readline()), f"{self.path}:{number}")


def load_replay(path: Path) -> dict[tuple[str, str], Generation]:
    """The rows of a replay file by (sample_id, variant); anything malformed is a UsageError."""
    return {key: _row_generation(row, where) for key, row, where, _ in _rows(path)}


def index_replay(path: Path) -> dict[str, dict[str, int]]:
    """Every row checked as load_replay checks it; kept: its byte offset and line number (packed in
    one int, offset * _LINE + line), by variant and sample id."""
    offsets: dict[str, dict[str, int]] = {}
    ids: dict[str, str] = {}  # one copy of a sample id for all its variants
    for (sample_id, variant), row, where, offset in _rows(path):
        sample_id = ids.setdefault(sample_id, sample_id)
        _row_generation(row, where)  # a malformed row is a UsageError now, not mid-run
        offsets.setdefault(variant, {})[sample_id] = offset * _LINE + int(where.rsplit(":", 1)[1])
    return offsets


def _rows(path: Path) -> Iterator[tuple[tuple[str, str], dict[str, Any], str, int]]:
    """(key, row, where, byte offset) of each row, read a line at a time; a second row for a key,
    or a file with none, is a UsageError."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"replay file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read replay file {path}: {exc}") from None
    seen: dict[str, set[str]] = {}
    with f:
        offset, number = 0, 0
        while True:
            try:
                raw = f.readline()
                line = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read replay file {path}: {exc}") from None
            if not raw:
                break
            number += 1
            start, offset = offset, offset + len(raw)
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
            ids = seen.setdefault(key[1], set())
            if key[0] in ids:
                raise UsageError(f"{where}: a second row for sample {key[0]!r}, variant {key[1]!r}")
            ids.add(key[0])
            yield key, row, where, start
    if not seen:
        raise UsageError(f"replay file {path} has no rows")


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
