"""Local table files (.jsonl, .json, .parquet, .tsv, .csv) -> Samples, one row at a time.

A file that cannot be read at all is the user's to fix (UsageError). A row that cannot be read is
the row's problem: it becomes `Sample(error=...)` carrying whatever was understood, so one bad row
costs one error record and never the run. The row helpers here (answers, options, images, ids) are
shared with the benchmark loaders.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from vlmstress.data.schema import LETTERS, ImageRef, Sample, image_fields, letters
from vlmstress.errors import UsageError

TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv", ".csv")
QUESTION_KEYS = ("question", "prompt", "text")
OPTION_LIST_KEYS = ("options", "choices")
ANSWER_KEYS = ("answer", "label")
IMAGE_KEYS = ("image", "image_path", "image_name")
# Multi-image rows: a list column (MuirBench calls it image_list), else numbered columns image_1,
# image_2, ... (BLINK's layout, where a question about two images leaves image_3 and image_4 empty).
IMAGE_LIST_KEYS = ("images", "image_list")
_NUMBERED_IMAGE = re.compile(r"image_(\d+)")
ID_KEYS = ("id", "index")
FAMILY_KEYS = ("family", "category")

# Text read with errors="surrogateescape" keeps undecodable bytes as lone surrogates, so a bad byte
# marks its row (found here) instead of failing the whole file.
_NON_UTF8 = re.compile("[\udc80-\udcff]")
_DATA_URL = re.compile(r"^data:image/", re.IGNORECASE)
_LETTER_ANSWER = re.compile(r"\(?([A-Z])\)?[.:]?")
_LETTER_AND_TEXT = re.compile(r"\(?([A-Z])\)?[.:)]\s*(.+)", re.DOTALL)


class RowError(ValueError):
    """What is wrong with one row; its message becomes that sample's `error`."""


@dataclass(frozen=True)
class BadRow:
    """A row that could not even be parsed into a mapping (say, a broken JSON line)."""

    error: str


Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------
# Files


def load_file(path: str | Path, *, limit: int | None = None) -> list[Sample]:
    """Read a table file into Samples.

    A row holds a question (`question`, `prompt` or `text`; a `hint` goes first), options (a list in
    `options`/`choices`, or columns A, B, C, ...; without any option column the row is open-ended),
    an answer (`answer`/`label`: letter, option text or 0-based index), an image (`image`,
    `image_path` or `image_name`: a path relative to the file, bytes, base64 or a datasets image
    dict; kept undecoded) or several (a list in `images`/`image_list`, or columns `image_1`,
    `image_2`, ..., each item as `image` takes it, in order), an id (`id`, else `index`, else the
    0-based row number) and a family (`family`/`category`). Other columns go to `meta`. Duplicate
    ids: the first is kept, later ones become error samples with ids like "7#dup1".
    """
    path = Path(path)
    rows = read_rows(path, limit=limit)
    if rows and not any(isinstance(r, Mapping) and _first_key(r, QUESTION_KEYS) for r in rows):
        raise UsageError(f"{path} has no question column (one of: {', '.join(QUESTION_KEYS)})")
    base_dir = path.resolve().parent
    samples = [
        error_sample(str(i), row.error) if isinstance(row, BadRow) else row_to_sample(row, i, base_dir)
        for i, row in enumerate(rows)
    ]
    return dedupe_ids(samples)


def read_rows(path: str | Path, *, limit: int | None = None) -> list[Row | BadRow]:
    """The rows of a table file as plain mappings (first `limit` only). UsageError if unreadable."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"data file not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a data file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UsageError(
            f"unsupported data file type '{suffix or path.name}' (use {', '.join(TABLE_SUFFIXES)})"
        )
    try:
        if suffix == ".jsonl":
            rows = _read_jsonl(path, limit)
        elif suffix == ".json":
            rows = _read_json(path)
        elif suffix == ".parquet":
            rows = pd.read_parquet(path, dtype_backend="pyarrow").to_dict("records")
        else:
            rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    except UsageError:
        raise
    except Exception as exc:  # pandas/pyarrow/json raise many types for a file that is not a table
        raise UsageError(f"cannot read {path} as {suffix[1:]}: {_one_line(exc)}") from None
    if not rows:
        raise UsageError(f"{path} has no rows")
    rows = resolve_image_index_refs(rows)
    return rows if limit is None else rows[:limit]


def _read_jsonl(path: Path, limit: int | None) -> list[Row | BadRow]:
    # Line by line (stdlib json per line) so that one broken line is one error sample.
    rows: list[Row | BadRow] = []
    with path.open("rb") as fh:
        for raw in fh:
            if limit is not None and len(rows) >= limit:
                break
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(BadRow(f"invalid JSON line: {exc.msg}"))
                continue
            except RecursionError:  # json's C parser gives up near 1,000 levels: that line's fault
                rows.append(BadRow("invalid JSON line: nested too deeply"))
                continue
            rows.append(
                value
                if isinstance(value, dict)
                else BadRow(f"row is a JSON {_json_type(value)}, not an object")
            )
    return rows


def _read_json(path: Path) -> list[Row | BadRow]:
    data = json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))
    if isinstance(data, dict):
        # Releases often wrap the list: {"data": [...]} or {"questions": [...]}.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UsageError(f"{path} is not a table: expected a list of objects, or an object holding one")
        data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path} is not a table: expected a list of objects, got a JSON {_json_type(data)}")
    return [
        r if isinstance(r, dict) else BadRow(f"row is a JSON {_json_type(r)}, not an object") for r in data
    ]


def _read_delimited(path: Path, sep: str) -> list[Row]:
    # Everything as text: a column type guessed from a sample would turn id "007" into 7 and
    # keep_default_na=False keeps options like "None" or "NA" as the text they are.
    frame = pd.read_csv(
        path,
        sep=sep,
        dtype=object,
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
        encoding_errors="surrogateescape",
    )
    return frame.to_dict("records")


def resolve_image_index_refs(rows: list[Row | BadRow]) -> list[Row | BadRow]:
    """VLMEvalKit TSVs store a repeated image once: other rows hold that row's `index` instead."""
    full = {
        _id_text(r["index"]): r["image"]
        for r in rows
        if isinstance(r, Mapping)
        and "index" in r
        and isinstance(r.get("image"), str)
        and len(r["image"]) > 64
    }
    if not full:
        return rows
    out: list[Row | BadRow] = []
    for r in rows:
        ref = r.get("image") if isinstance(r, Mapping) else None
        if isinstance(ref, str) and len(ref) <= 64 and ref.strip() in full:
            r = {**r, "image": full[ref.strip()]}
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------
# Rows


def _synth_facts(value: Any) -> bool:
    from vlmstress.data.synth import FAMILIES

    return (
        isinstance(value, dict) and value.get("family") in FAMILIES and isinstance(value.get("objects"), list)
    )


def row_to_sample(row: Row, row_no: int, base_dir: Path) -> Sample:
    """One generic row -> Sample; any problem becomes an error sample with what is known."""
    id_key, q_key, ans_key, fam_key, img_key = (
        _first_key(row, keys) for keys in (ID_KEYS, QUESTION_KEYS, ANSWER_KEYS, FAMILY_KEYS, IMAGE_KEYS)
    )
    letter_keys = [] if _present_key(row, OPTION_LIST_KEYS) else [ltr for ltr in LETTERS if ltr in row]
    image_keys = multi_image_keys(row)
    if image_keys:
        img_key = None  # a multi-image row's images are all in image_keys, `image` among them if named
    used = {id_key, q_key, ans_key, fam_key, img_key, "hint", *OPTION_LIST_KEYS, *letter_keys, *image_keys}
    sample_id = str(row_no)
    question = _repair(row[q_key]) if q_key and isinstance(row[q_key], str) else ""
    try:
        sample_id = _id_text(row[id_key]) if id_key else sample_id
        meta = {k: plain(v) for k, v in row.items() if k not in used}
    except RowError as exc:  # a cell nested too deeply to copy
        return error_sample(sample_id, str(exc), question=question)
    known: dict[str, Any] = {"sample_id": sample_id, "question": question, "meta": meta}
    if id_key == "index":
        known["meta"]["index"] = index_value(row["index"])  # MMBench's circular groups need it
    if _synth_facts(row.get("facts")):
        # A synth set written by `vlmstress data synth`: its scene facts write the reasoning and
        # captions of the perturbations, as for `--data synth`, not the generic option-text ones.
        known["facts"] = known["meta"].pop("facts")
    try:
        bad = find_non_utf8(row)
        if bad is not None:
            raise RowError(f"non-UTF-8 text in column '{bad}'")
        known["family"] = text_field(row, fam_key) if fam_key else None
        if image_keys:
            known.update(image_fields(resolve_images(row, image_keys, base_dir)))
        elif img_key:
            known.update(image_fields(resolve_images(row, [img_key], base_dir)))
        _, options = row_options(row)
        known["options"] = options or ()
        question = text_field(row, q_key) if q_key else None
        if not question:
            raise RowError("empty question")
        hint = text_field(row, "hint") if "hint" in row else None
        known["question"] = f"{hint}\n{question}" if hint else question  # MMBench: the hint comes first
        if ans_key is None:
            raise RowError("no answer (column answer or label)")
        if options is None:  # no option column at all: an open-ended question, graded by text
            value = row[ans_key]
            numeric = (
                isinstance(value, numbers.Real) and not isinstance(value, bool) and not is_missing(value)
            )
            answer_text = str(plain(value)) if numeric else text_field(row, ans_key)
            if not answer_text:
                raise RowError("no answer")
            return Sample(answer_text=answer_text, **known)
        if not options:
            raise RowError("no options")
        target, warning = answer_letter(row[ans_key], options)
        if warning:
            known["meta"]["answer_warning"] = warning
        return Sample(target=target, **known)
    except RowError as exc:
        return error_sample(error=str(exc), **known)
    except Exception as exc:  # a row's content is untrusted: whatever breaks on it is that row's error
        return error_sample(error=f"unreadable row: {type(exc).__name__}: {_one_line(exc)}", **known)


def error_sample(sample_id: str, error: str, **known: Any) -> Sample:
    """A sample that could not be read properly, with whatever fields were understood."""
    known.setdefault("question", "")
    return Sample(sample_id=sample_id, error=error, **known)


def row_options(row: Row) -> tuple[list[str], tuple[str, ...] | None]:
    """(keys used, options): from a list column or columns A, B, C, ...; None if the row has none.

    A present but empty option column means "no options" (an error), not an open-ended question."""
    list_key = _present_key(row, OPTION_LIST_KEYS)
    if list_key is not None:
        return [list_key], clean_options(as_list(row[list_key], list_key), list_key)
    letter_keys = [ltr for ltr in LETTERS if ltr in row]
    if not letter_keys:
        return [], None
    return letter_keys, letter_column_options(row)


def letter_column_options(row: Row) -> tuple[str, ...]:
    """Options from columns A, B, C, ...: trailing empty cells (NaN, "", "nan") are not options."""
    values = [row.get(ltr) for ltr in LETTERS]
    while values and _empty_option(values[-1]):
        values.pop()
    for ltr, value in zip(LETTERS, values, strict=False):
        if _empty_option(value):
            raise RowError(f"option {ltr} is empty but a later option is not")
    return clean_options(values, "A, B, ...")


def clean_options(values: Iterable[Any], where: str) -> tuple[str, ...]:
    """Option values as stripped text; numbers become their text, anything else is a RowError."""
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            text = value.strip()
        elif isinstance(value, int | float) and not isinstance(value, bool) and not is_missing(value):
            text = str(plain(value))
        elif is_missing(value):
            text = ""
        else:
            raise RowError(f"option {_label(i)} in '{where}' must be text, got {type(value).__name__}")
        if not text:
            raise RowError(f"option {_label(i)} in '{where}' is empty")
        out.append(text)
    if len(out) > len(LETTERS):
        raise RowError(f"{len(out)} options: at most {len(LETTERS)} can be lettered")
    return tuple(out)


def _label(i: int) -> str:
    return LETTERS[i] if i < len(LETTERS) else str(i + 1)


def as_list(value: Any, key: str) -> list[Any]:
    """A list-valued cell: a list or array, or its JSON / Python-literal text (a CSV round trip)."""
    if is_missing(value):
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy / arrow arrays
        return list(value.tolist())
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, list | tuple):
                return list(parsed)
    raise RowError(f"column '{key}' must be a list of options, got {type(value).__name__}")


def answer_letter(answer: Any, options: tuple[str, ...]) -> tuple[str, str | None]:
    """The target letter for `answer`, and a warning when its letter and its text disagree.

    Accepted: a letter ("B", "(B)", "B."), an option's text, letter plus text ("B. right", as
    Spatial-MM has it), or a 0-based index (an int, or digits when no option has that text).
    """
    valid = letters(len(options))
    if is_missing(answer):
        raise RowError("no answer")
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real | str):
        raise RowError(f"answer must be a letter, option text or index, got {type(answer).__name__}")
    if isinstance(answer, numbers.Real):  # numpy integers too
        if not float(answer).is_integer():
            raise RowError(f"answer {answer} is not an option index")
        return _index_letter(int(answer), valid), None
    text = answer.strip()
    if not text:
        raise RowError("no answer")
    m = _LETTER_ANSWER.fullmatch(text)
    if m:
        if m.group(1) not in valid:
            raise RowError(f"answer {text!r} is not among the {len(options)} options")
        return m.group(1), None
    for fold in (lambda s: s, str.casefold):
        hits = [ltr for ltr, opt in zip(valid, options, strict=True) if fold(opt) == fold(text)]
        if len(hits) == 1:
            return hits[0], None
        if len(hits) > 1:
            raise RowError(f"answer {text!r} matches several options ({', '.join(hits)})")
    m = _LETTER_AND_TEXT.fullmatch(text)
    if m and m.group(1) in valid:
        ltr, said = m.group(1), m.group(2).strip()
        opt = options[valid.index(ltr)]
        warning = (
            None if said.casefold() == opt.casefold() else f"answer {text!r} but option {ltr} is {opt!r}"
        )
        return ltr, warning
    if text.isdigit():
        return _index_letter(int(text), valid), None
    raise RowError(f"answer {text!r} is not among the options")


def _index_letter(index: int, valid: list[str]) -> str:
    if not 0 <= index < len(valid):
        raise RowError(f"answer index {index} is out of range for {len(valid)} options")
    return valid[index]


def multi_image_keys(row: Row) -> list[str]:
    """The columns of a multi-image row, in image order: a list column (`images`, `image_list`),
    else numbered columns `image_1`, `image_2`, ... by number. Empty for a one-image row."""
    list_key = _first_key(row, IMAGE_LIST_KEYS)
    if list_key is not None:
        return [list_key]
    numbered = [
        (int(m.group(1)), k) for k in row if isinstance(k, str) and (m := _NUMBERED_IMAGE.fullmatch(k))
    ]
    return [k for _, k in sorted(numbered)]


def resolve_images(row: Row, keys: list[str], base_dir: Path) -> list[ImageRef]:
    """Every image of the row in order, each as resolve_image keeps it. A list cell gives one image
    per item (an `image` cell may hold a list too: VLMEvalKit's multi-image TSVs write it as JSON
    text); an empty numbered column is no image, but an unusable item fails the whole row."""
    refs: list[ImageRef] = []
    for key in keys:
        value = row[key]
        items = _image_list(value, key) if key in IMAGE_LIST_KEYS or _holds_list(value) else None
        if items is None:
            ref = resolve_image(value, base_dir, key)
            if ref is not None:
                refs.append(ref)
            continue
        for k, item in enumerate(items, 1):
            if is_missing(item):
                raise RowError(f"image {k} in column '{key}' is empty")
            refs.append(resolve_image(item, base_dir, f"{key}[{k}]"))
    return refs


def _holds_list(value: Any) -> bool:
    # '[' starts no path, base64 text or data URL a table holds, so such text is a JSON list.
    if isinstance(value, str):
        return value.lstrip().startswith("[")
    return isinstance(value, list | tuple) or (hasattr(value, "tolist") and not isinstance(value, bytes))


def _image_list(value: Any, key: str) -> list[Any]:
    try:
        return as_list(value, key)
    except RowError:
        raise RowError(f"column '{key}' must be a list of images, got {type(value).__name__}") from None


def resolve_image(value: Any, base_dir: Path, key: str = "image") -> ImageRef:
    """Keep an image reference undecoded, but make a relative path absolute against `base_dir`."""
    if is_missing(value):
        return None
    if isinstance(value, Mapping):
        if value.get("bytes") is None and value.get("path"):
            return {"bytes": None, "path": str(_resolve_path(str(value["path"]), base_dir))}
        return dict(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if _DATA_URL.match(text) or not _looks_like_path(text, base_dir):
            return text  # base64; decoded by images.load_image at run time
        return str(_resolve_path(text, base_dir))
    raise RowError(f"column '{key}' must be a path, bytes or base64 text, got {type(value).__name__}")


def _looks_like_path(text: str, base_dir: Path) -> bool:
    # '.' is not in the base64 alphabet, so text with a file extension is a path, never base64.
    if "." in text:
        return True
    try:
        return len(text) <= 255 and (base_dir / text).exists()
    except OSError:
        return False


def _resolve_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def dedupe_ids(samples: list[Sample]) -> list[Sample]:
    """Keep the first sample of each id; later ones become error samples under a fresh id."""
    taken = {s.sample_id for s in samples}
    seen: set[str] = set()
    out = []
    for s in samples:
        if s.sample_id not in seen:
            seen.add(s.sample_id)
            out.append(s)
            continue
        k = 1
        while f"{s.sample_id}#dup{k}" in taken:
            k += 1
        new_id = f"{s.sample_id}#dup{k}"
        taken.add(new_id)
        out.append(
            replace(s, sample_id=new_id, error=f"duplicate sample id {s.sample_id!r} (the first is kept)")
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Cells


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a cell that holds nothing."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _empty_option(value: Any) -> bool:
    # "nan" text is what a NaN cell becomes after a str() round trip (3DSRBench has such cells).
    return is_missing(value) or isinstance(value, str) and value.strip().lower() in ("", "nan")


def text_field(row: Row, key: str) -> str | None:
    """A text cell, stripped; None when missing. Bytes must be UTF-8; other types are a RowError."""
    value = row.get(key)
    if is_missing(value):
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RowError(f"non-UTF-8 text in column '{key}'") from None
    if not isinstance(value, str):
        raise RowError(f"column '{key}' must be text, got {type(value).__name__}")
    return value.strip()


def find_non_utf8(value: Any, key: str | None = None) -> str | None:
    """The name of the first column whose text held undecodable bytes, if any."""
    if isinstance(value, str):
        return key if _NON_UTF8.search(value) else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and _NON_UTF8.search(k):
                return k
            found = find_non_utf8(v, key or str(k))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for v in value:
            found = find_non_utf8(v, key)
            if found:
                return found
    return None


# Deeper cells are a row error: copying them recursively would end the run with RecursionError.
MAX_DEPTH = 100


def plain(value: Any, _depth: int = 0) -> Any:
    """A cell as a plain JSON-friendly value: NaN -> None, 3.0 -> 3, arrays -> lists."""
    if _depth > MAX_DEPTH:
        raise RowError(f"a cell is nested more than {MAX_DEPTH} levels deep")
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return _repair(value)
    if hasattr(value, "tolist") and not isinstance(value, int | float):
        return plain(value.tolist(), _depth)  # numpy scalars and arrays
    if isinstance(value, Mapping):
        return {str(k): plain(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, _depth + 1) for v in value]
    return value


def index_value(value: Any) -> Any:
    """An `index` cell as a number even when read from text (circular groups are index % 1e6)."""
    value = plain(value)
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def _id_text(value: Any) -> str:
    value = plain(value)
    return str(value).strip()


def _first_key(row: Row, keys: Iterable[str]) -> str | None:
    """The first of `keys` that holds something (an empty "id" column yields to "index")."""
    return next((k for k in keys if k in row and not _blank(row[k])), None)


def _present_key(row: Row, keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k in row), None)


def _blank(value: Any) -> bool:
    return is_missing(value) or isinstance(value, str) and not value.strip()


def _repair(text: str) -> str:
    return _NON_UTF8.sub("\ufffd", text)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
