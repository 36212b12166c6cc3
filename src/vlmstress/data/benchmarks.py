"""Loaders for the paper's benchmarks (docs/benchmarks.md) and their official aggregates.

Every benchmark reads either from the hub with `datasets` (which honours HF_HUB_OFFLINE,
HF_DATASETS_OFFLINE and the local cache) or from `data_dir`, a local copy laid out as the hub
repository or the benchmark's own release. Rows become Samples with the options split out of the
question text and the answer as a letter; what the official aggregate formulas need stays in `meta`.
Images stay undecoded references (decoded by images.load_image at run time).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlmstress.data.files import (
    BadRow,
    Row,
    RowError,
    answer_letter,
    as_list,
    clean_options,
    dedupe_ids,
    error_sample,
    find_non_utf8,
    index_value,
    is_missing,
    letter_column_options,
    plain,
    read_rows,
    resolve_image,
    text_field,
)
from vlmstress.data.schema import LETTERS, Sample
from vlmstress.errors import UsageError

WHATSUP_QUESTION = "Which caption describes the image?"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# ---------------------------------------------------------------------------------------------------
# Options written inside the question

# One pattern per way benchmarks write an option marker: "(A) x", "A. x", "A: x", "A) x".
_MARKER_STYLES = (r"\({L}\)\s*", r"{L}\.\s+", r"{L}:\s*", r"{L}\)\s+")
_NOT_AFTER_WORD = r"(?<![\w(])"
_OPTIONS_LABEL = re.compile(r"(?:^|\s)(?:options|choices)\s*:?\s*$", re.IGNORECASE)


def split_inline_options(text: str) -> tuple[str, tuple[str, ...], str] | None:
    """Split options written into a question: (question, options, trailing text) or None.

    Handles one option per line (`A. left` / `(A) 3`) and runs on one line (`(A) x (B) y`,
    MMStar's `Options: A: x, B: y`). Letters must run A, B, C, ... in order; at least two options.
    The trailing text is whatever follows the last option's line (V*'s answer instruction).
    """
    best: tuple[str, tuple[str, ...], str] | None = None
    for style in _MARKER_STYLES:
        for first in re.finditer(_NOT_AFTER_WORD + style.format(L="A"), text):
            for one_per_line in (True, False):
                found = _options_from(text, style, first, one_per_line)
                if found and (best is None or len(found[1]) > len(best[1])):
                    best = found
    return best


def _options_from(
    text: str, style: str, first: re.Match[str], one_per_line: bool
) -> tuple[str, tuple[str, ...], str] | None:
    line_start = text.rfind("\n", 0, first.start()) + 1
    if one_per_line and text[line_start : first.start()].strip():
        return None
    line_end = _line_end(text, first.start())
    marks = [first]
    for ltr in LETTERS[1:]:
        if one_per_line:
            pattern = re.compile(r"(?m)^[ \t]*" + style.format(L=ltr))
            nxt = pattern.search(text, marks[-1].end())
        else:
            pattern = re.compile(_NOT_AFTER_WORD + style.format(L=ltr))
            nxt = pattern.search(text, marks[-1].end(), line_end)
        if nxt is None:
            break
        marks.append(nxt)
    if len(marks) < 2:
        return None
    ends = [m.start() for m in marks[1:]] + [_line_end(text, marks[-1].end())]
    options = tuple(
        text[m.end() : end].strip().rstrip(",;").strip() for m, end in zip(marks, ends, strict=True)
    )
    question = _OPTIONS_LABEL.sub("", text[: first.start()].rstrip()).rstrip()
    return question, options, text[ends[-1] :].strip()


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def strip_option_prefixes(items: Iterable[str]) -> tuple[str, ...]:
    """["(A) x", "(B) y"] -> ("x", "y"); a prefix must name the item's own letter ("A big car" stays)."""
    out = []
    for ltr, item in zip(LETTERS, items, strict=False):
        m = re.match(rf"\s*(?:\({ltr}\)|{ltr}[.:)])\s*", item)
        out.append(item[m.end() :] if m else item)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Row converters: (row, row number, context) -> Sample. They fill `known` as they go, so a row that
# breaks half way still yields an error sample with everything read so far.


@dataclass(frozen=True)
class Context:
    base_dir: Path  # relative image paths are resolved against it
    seed: int = 0
    subset: str = ""
    find_image: Callable[[str], str] | None = None  # image file name -> path (Spatial-MM, WhatsUp)


Converter = Callable[[Row, int, Context, dict[str, Any]], Sample]


def _cvbench(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    # idx may restart per config, so the 2D/3D type is part of the id.
    known["sample_id"] = f"{_text(row, 'type') or ctx.subset}-{plain(row.get('idx', i))}"
    known["meta"] = _meta(row, "source", "task", "type", "idx", "filename", "source_dataset")
    known["family"] = _text(row, "task")
    known["image"] = resolve_image(row.get("image"), ctx.base_dir)
    prompt = _text(row, "prompt") or _text(row, "question") or ""
    split = split_inline_options(prompt)
    known["question"] = split[0] if split else prompt
    if "choices" in row and not is_missing(row["choices"]):
        options = clean_options(as_list(row["choices"], "choices"), "choices")
    else:
        options = split[1] if split else ()
    return _multiple_choice(row.get("answer"), options, known)


def _threedsr(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    index, qid = row.get("index"), _text(row, "qid")
    known["sample_id"] = str(plain(index)) if not is_missing(index) else qid or str(i)
    known["meta"] = _meta(row, "qid", "index", "category")
    known["family"] = _text(row, "category")
    known["image"] = resolve_image(row.get("image"), ctx.base_dir)
    known["question"] = _text(row, "question") or ""
    return _multiple_choice(row.get("answer"), letter_column_options(row), known)


def _spatialmm_obj(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = f"{ctx.subset}-{i}"
    known["family"] = ctx.subset
    known["meta"] = _meta(row, "object1", "object2", "image_name")
    known["image"] = _named_image(row, "image_name", ctx)
    text = _text(row, "question") or ""
    split = split_inline_options(text)
    if split is None:
        known["question"] = text
        raise RowError("no options found in the question")
    known["question"] = split[0]
    sample = _multiple_choice(row.get("answer"), split[1], known)
    if "answer_warning" in sample.meta:  # "B. right" where option B is not "right": keep B, flag it
        sample.meta["answer_disagrees"] = True
        sample.meta["answer_raw"] = plain(row.get("answer"))
    return sample


def _spatialmm_multihop(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = f"multihop-{i}"
    known["meta"] = _meta(row, "reasoning", "hop", "image_name")
    hop = plain(row.get("hop"))
    known["family"] = f"{hop}-hop" if hop is not None else "multihop"
    known["image"] = _named_image(row, "image_name", ctx)
    known["question"] = _text(row, "question") or ""
    answer = row.get("answer")
    answer_text = str(plain(answer)) if isinstance(answer, int | float) and not is_missing(answer) else None
    answer_text = answer_text or _text(row, "answer")
    if not known["question"]:
        raise RowError("empty question")
    if not answer_text:
        raise RowError("no answer")
    return Sample(answer_text=answer_text, **known)


def _whatsup(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = f"{ctx.subset}-{i}"
    known["family"] = ctx.subset
    known["question"] = WHATSUP_QUESTION
    known["meta"] = _meta(row, "image_path")
    known["image"] = _named_image(row, "image_path", ctx)
    captions = clean_options(as_list(row.get("caption_options"), "caption_options"), "caption_options")
    if len(captions) < 2:
        raise RowError(f"{len(captions)} caption options: need at least 2")
    # The first caption is the true one; shuffle so its letter carries no signal, seeded per sample.
    order = list(range(len(captions)))
    random.Random(f"whatsup:{ctx.seed}:{known['sample_id']}").shuffle(order)
    known["options"] = tuple(captions[j] for j in order)
    known["meta"]["caption_order"] = order
    return Sample(target=LETTERS[order.index(0)], **known)


def _vstar(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    category = _text(row, "category")
    qid = plain(row.get("question_id", i))
    known["sample_id"] = f"{category}-{qid}" if category else str(qid)
    known["family"] = category
    known["meta"] = _meta(row, "question_id", "category")
    known["image"] = resolve_image(row.get("image"), ctx.base_dir)
    text = _text(row, "text") or _text(row, "question") or ""
    split = split_inline_options(text)
    if split is None:
        known["question"] = text
        raise RowError("no options found in the question")
    known["question"] = split[0]
    if split[2]:
        known["meta"]["instruction"] = split[2]  # the harness's answer instruction; templates add ours
    return _multiple_choice(row.get("label", row.get("answer")), split[1], known)


def _mmerealworld(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = str(plain(row.get("index", row.get("question_id", i))))
    known["family"] = _text(row, "category")
    known["meta"] = _meta(row, "index", "question_id", "category", l2_category=("l2-category", "l2_category"))
    known["image"] = resolve_image(row.get("bytes", row.get("image")), ctx.base_dir)
    known["question"] = _text(row, "question") or ""
    items = as_list(row.get("multi-choice options"), "multi-choice options")
    options = clean_options(strip_option_prefixes(str(x) for x in items), "multi-choice options")
    return _multiple_choice(row.get("answer"), options, known)


def _mmbench(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = str(plain(row.get("index", i)))
    known["family"] = _text(row, "category")
    known["meta"] = _meta(
        row, "index", "category", "source", "split", "comment", l2_category=("L2-category", "l2-category")
    )
    known["image"] = resolve_image(row.get("image"), ctx.base_dir)
    question = _text(row, "question") or ""
    hint = _text(row, "hint")
    # MMBench's hint is context the question depends on; VLMEvalKit puts it first.
    known["question"] = f"{hint}\n{question}" if hint and question else question
    return _multiple_choice(row.get("answer"), letter_column_options(row), known)


def _mmstar(row: Row, i: int, ctx: Context, known: dict[str, Any]) -> Sample:
    known["sample_id"] = str(plain(row.get("index", i)))
    known["family"] = _text(row, "category")
    known["meta"] = _meta(row, "index", "category", l2_category=("l2_category", "l2-category"))
    known["image"] = resolve_image(row.get("image"), ctx.base_dir)
    text = _text(row, "question") or ""
    split = split_inline_options(text)
    known["question"] = split[0] if split else text
    # VLMEvalKit's TSV also has columns A-D; the hub copy only has the options inside the question.
    options = letter_column_options(row) if "A" in row else (split[1] if split else ())
    if not options:
        raise RowError("no options found in the question")
    return _multiple_choice(row.get("answer"), options, known)


def _multiple_choice(answer: Any, options: tuple[str, ...], known: dict[str, Any]) -> Sample:
    known["options"] = options
    known.setdefault("meta", {})
    if not known.get("question"):
        raise RowError("empty question")
    if not options:
        raise RowError("no options")
    target, warning = answer_letter(answer, options)
    if warning:
        known["meta"]["answer_warning"] = warning
    return Sample(target=target, **known)


def _text(row: Row, key: str) -> str | None:
    return text_field(row, key) if key in row else None


def _meta(row: Row, *keys: str, **renamed: tuple[str, ...]) -> dict[str, Any]:
    meta = {k: index_value(row[k]) if k == "index" else plain(row[k]) for k in keys if k in row}
    for name, sources in renamed.items():
        for src in sources:
            if src in row:
                meta[name] = plain(row[src])
                break
    return meta


def _named_image(row: Row, key: str, ctx: Context) -> str | None:
    name = _text(row, key)
    if not name:
        return None
    return ctx.find_image(name) if ctx.find_image else str(ctx.base_dir / name)


def convert_rows(
    rows: Iterable[Row | BadRow], convert: Converter, ctx: Context, start: int = 0
) -> list[Sample]:
    """Apply a converter to every row; a row that fails becomes an error sample, never an exception."""
    out = []
    for i, row in enumerate(rows, start):
        known: dict[str, Any] = {"sample_id": str(i), "question": ""}
        if isinstance(row, BadRow):
            out.append(error_sample(str(i), row.error))
            continue
        try:
            bad = find_non_utf8(row)
            if bad is not None:
                raise RowError(f"non-UTF-8 text in column '{bad}'")
            out.append(convert(row, i, ctx, known))
        except RowError as exc:
            out.append(error_sample(error=str(exc), **known))
        except Exception as exc:  # a row's content is untrusted: whatever breaks on it is that row's error
            out.append(
                error_sample(error=f"unreadable row: {type(exc).__name__}: {exc}".splitlines()[0], **known)
            )
    return out


# ---------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Part:
    """One slice of a benchmark: a hub config/split, its local file patterns, and how rows convert."""

    convert: Converter
    hub_id: str | None
    config: str | None
    split: str | None
    local: tuple[str, ...]  # glob groups under data_dir; the first group that matches is used
    subset: str = ""
    kind: str = "table"  # "table": rows carry their images; "release": json + image files by name
    hub_image_paths: bool = False  # hub rows name image files in the repository instead of holding them


@dataclass(frozen=True)
class Benchmark:
    name: str
    about: str  # what --data-dir must hold, for error messages
    parts: tuple[Part, ...]


def _release(convert: Converter, file_name: str, subset: str) -> Part:
    """A part read only from a GitHub release: a json file (anywhere under data_dir) + image files."""
    return Part(convert, None, None, None, (f"**/{file_name}",), subset, kind="release")


_CV = "nyu-visionx/CV-Bench"
_3DSR = "oscarqjh/3DSRBench_lmmseval"
_VSTAR = "craigwu/vstar_bench"
_MME = "yifanzhang114/MME-RealWorld-lite-lmms-eval"
_SPATIALMM = "the Spatial-MM release (data/spatial_mm_one_obj.json, data/spatial_mm_two_obj.json, images)"
_WHATSUP = "the WhatsUp release (controlled_images_dataset.json, controlled_clevr_dataset.json, images)"

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("cvbench", "test_2d.parquet and test_3d.parquet", (
            Part(_cvbench, _CV, "2D", "test", ("test_2d.parquet", "**/test_2d*.parquet"), "2D"),
            Part(_cvbench, _CV, "3D", "test", ("test_3d.parquet", "**/test_3d*.parquet"), "3D"),
        )),
        Benchmark("3dsrbench", "3dsr/test-*.parquet (or a VLMEvalKit 3DSRBench.tsv)", (
            Part(_threedsr, _3DSR, "3dsr", "test", ("**/3dsr/*.parquet", "**/*3DSRBench*.tsv")),
        )),
        Benchmark("spatialmm-obj", _SPATIALMM, (
            _release(_spatialmm_obj, "spatial_mm_one_obj.json", "one_obj"),
            _release(_spatialmm_obj, "spatial_mm_two_obj.json", "two_obj"),
        )),
        Benchmark("spatialmm-multihop", "the Spatial-MM release (data/multihop_reasoning_309.json, images)", (
            _release(_spatialmm_multihop, "multihop_reasoning_309.json", "multihop"),
        )),
        Benchmark("whatsup", _WHATSUP, (
            _release(_whatsup, "controlled_images_dataset.json", "controlled_images"),
            _release(_whatsup, "controlled_clevr_dataset.json", "controlled_clevr"),
        )),
        Benchmark("vstar", "test_questions.jsonl and the image folders", (
            Part(_vstar, _VSTAR, None, "test", ("**/test_questions.jsonl",), hub_image_paths=True),
        )),
        Benchmark("mmerealworld-lite", "the hub repository's parquet files", (
            Part(_mmerealworld, _MME, None, "train", ("**/train*.parquet", "**/*.parquet")),
        )),
        Benchmark("mmbench", "en/dev-*.parquet (or VLMEvalKit's MMBench_DEV_EN.tsv)", (
            Part(_mmbench, "lmms-lab/MMBench", "en", "dev", ("**/en/dev*.parquet", "**/MMBench_DEV_EN*.tsv")),
        )),
        # the dataset card names the config `mmstar`; the repository has one config, which None selects
        # whatever it is called (as lmms-eval and most users call it).
        Benchmark("mmstar", "mmstar.parquet (or VLMEvalKit's MMStar.tsv)", (
            Part(_mmstar, "Lin-Chen/MMStar", None, "val", ("mmstar.parquet", "**/mmstar*.parquet",
                                                           "**/val*.parquet", "**/MMStar*.tsv")),
        )),
    )
}  # fmt: skip


def load_benchmark(
    name: str, *, data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> list[Sample]:
    """Samples of benchmark `name`, from `data_dir` if given, else from the hub (or its cache)."""
    bench = BENCHMARKS.get(name)
    if bench is None:
        raise UsageError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if root is not None and not root.exists():
        raise UsageError(f"data dir not found: {root}")
    if root is None and bench.parts[0].hub_id is None:
        raise UsageError(f"{name} is not on the hub: pass --data-dir with {bench.about}")
    parts = bench.parts
    if root is not None and root.is_file() and not any(_file_matches(root, p.local) for p in parts):
        parts = (replace(parts[0], local=(root.name,)),)  # a single file named its own way
    samples: list[Sample] = []
    found_any = False
    for part in parts:
        left = None if limit is None else limit - len(samples)
        if left is not None and left <= 0:
            break
        if root is None:
            part_samples = _from_hub(part, name, left, seed)
        else:
            part_samples = _from_dir(part, root, left, seed)
        found_any = found_any or part_samples is not None
        samples += part_samples or []
    if root is not None and not found_any:
        raise UsageError(f"no {name} files under {root}: expected {bench.about}")
    return dedupe_ids(samples)


def _from_dir(part: Part, root: Path, limit: int | None, seed: int) -> list[Sample] | None:
    if root.is_dir():
        files = _glob_first(root, part.local)
    else:
        files = [root] if _file_matches(root, part.local) else []
    if not files:
        return None
    samples: list[Sample] = []
    for path in files:
        left = None if limit is None else limit - len(samples)
        if left is not None and left <= 0:
            break
        rows = read_rows(path, limit=left)
        release_root = root if root.is_dir() else path.parent
        find_image = _ImageFinder(release_root, path.parent) if part.kind == "release" else None
        samples += convert_rows(rows, part.convert, Context(path.parent, seed, part.subset, find_image))
    return samples


def _file_matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(path.match(p.split("/")[-1]) for p in patterns)


def _glob_first(root: Path, groups: tuple[str, ...]) -> list[Path]:
    for pattern in groups:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if files:
            return files
    return []


class _ImageFinder:
    """Where a release's image file is: releases keep images in folders of their own naming, so a
    name that is not found beside the release root or the json is looked up by file name."""

    def __init__(self, root: Path, json_dir: Path) -> None:
        self.root, self.json_dir = root, json_dir
        self._by_name: dict[str, str] | None = None  # built on the first miss only: rglob is slow

    def __call__(self, name: str) -> str:
        for base in (self.root, self.json_dir):
            if (base / name).is_file():
                return str(base / name)
        if self._by_name is None:
            self._by_name = {}
            for p in sorted(self.root.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    self._by_name.setdefault(p.name, str(p))
        # Not found at all: the expected path, so that load_image reports it missing at run time.
        return self._by_name.get(Path(name).name, str(self.root / name))


def _from_hub(part: Part, name: str, limit: int | None, seed: int) -> list[Sample]:
    import datasets  # imported here: a slow import that only hub loading needs

    where = f"{part.hub_id}" + (f" config {part.config}" if part.config else "") + f" split {part.split}"
    try:
        ds = datasets.load_dataset(part.hub_id, part.config, split=part.split)
    except Exception as exc:  # offline without a cache, unknown repo, ...: the user must supply the data
        raise UsageError(
            f"cannot load {name} from the hub ({where}): {_one_line(exc)}; pass --data-dir with a local copy"
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    # Keep images undecoded ({"bytes", "path"}), as everywhere else; the runner decodes them.
    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    rows = list(ds)
    base_dir = _hub_files(part.hub_id, rows) if part.hub_image_paths else Path(".")
    return convert_rows(rows, part.convert, Context(base_dir, seed, part.subset))


def _hub_files(repo_id: str, rows: list[Row]) -> Path:
    """V*'s hub rows name image files in the repository: fetch just those (cache-aware, offline-aware)."""
    paths = sorted({r["image"] for r in rows if isinstance(r.get("image"), str)})
    if not paths:
        return Path(".")
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, repo_type="dataset", allow_patterns=paths))
    except Exception as exc:
        raise UsageError(f"cannot fetch the images of {repo_id}: {_one_line(exc)}; pass --data-dir") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------------------------
# Official aggregates. Each takes (Sample.meta, correct) pairs for one variant's scored records
# (error records left out) and returns named scores; a score that cannot be computed is None.

Pairs = Iterable[tuple[Mapping[str, Any], bool]]


def accuracy(pairs: Pairs) -> float | None:
    hits = [bool(c) for _, c in pairs]
    return sum(hits) / len(hits) if hits else None


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _by(pairs: Pairs, key: Callable[[Mapping[str, Any]], Any]) -> dict[Any, list[bool]]:
    groups: dict[Any, list[bool]] = defaultdict(list)
    for meta, correct in pairs:
        groups[key(meta)].append(bool(correct))
    return groups


def _all_correct_share(groups: dict[Any, list[bool]]) -> float | None:
    return sum(all(g) for g in groups.values()) / len(groups) if groups else None


def cvbench_scores(pairs: Pairs) -> dict[str, float | None]:
    """CV-Bench: 2D = mean of the ADE20K and COCO accuracies, 3D = Omni3D; overall = (2D + 3D) / 2."""
    pairs = list(pairs)
    by_source = {k: sum(v) / len(v) for k, v in _by(pairs, lambda m: m.get("source")).items()}
    ade, coco, omni = (by_source.get(s) for s in ("ADE20K", "COCO", "Omni3D"))
    acc_2d = _mean([ade, coco])
    overall = _mean([acc_2d, omni])
    return {
        "accuracy": accuracy(pairs),
        "ade20k": ade,
        "coco": coco,
        "omni3d": omni,
        "accuracy_2d": acc_2d,
        "accuracy_3d": omni,
        "cvbench_overall": overall,
    }


def mmstar_scores(pairs: Pairs) -> dict[str, float | None]:
    """MMStar: the mean of the per-l2_category accuracies (18 of them on the full set)."""
    pairs = list(pairs)
    per_l2 = {k: sum(v) / len(v) for k, v in _by(pairs, lambda m: m.get("l2_category")).items()}
    scores: dict[str, float | None] = {
        "accuracy": accuracy(pairs),
        "mmstar_avg": _mean(list(per_l2.values())),
    }
    scores.update({f"l2/{k}": v for k, v in sorted(per_l2.items(), key=lambda kv: str(kv[0]))})
    return scores


def mmbench_scores(pairs: Pairs) -> dict[str, float | None]:
    """MMBench circular: copies share index % 1e6; a question counts only if every copy is right."""
    pairs = list(pairs)
    return {"accuracy": accuracy(pairs), "circular_accuracy": _all_correct_share(_by(pairs, _mmbench_group))}


def _mmbench_group(meta: Mapping[str, Any]) -> Any:
    index = meta.get("index")
    try:
        return int(index) % 1_000_000
    except (TypeError, ValueError):
        return ("unindexed", str(index))


def threedsr_scores(pairs: Pairs) -> dict[str, float | None]:
    """3DSRBench, as lmms-eval: qid "X", "X-1" (circular copy), "X-flip", "X-flip-1" (flipped copies).

    circular: all copies of one question (flip kept apart); flip: a question and its flip;
    flip_circular: every copy sharing the base qid.
    """
    pairs = list(pairs)
    return {
        "accuracy": accuracy(pairs),
        "circular_accuracy": _all_correct_share(_by(pairs, lambda m: re.sub(r"-\d+$", "", _qid(m)))),
        "flip_accuracy": _all_correct_share(_by(pairs, lambda m: _qid(m).replace("-flip", ""))),
        "flip_circular_accuracy": _all_correct_share(_by(pairs, lambda m: _qid(m).split("-")[0])),
    }


def _qid(meta: Mapping[str, Any]) -> str:
    qid = meta.get("qid")
    return str(qid) if qid is not None else f"index:{meta.get('index')}"


AGGREGATES: dict[str, Callable[[Pairs], dict[str, float | None]]] = {
    "cvbench": cvbench_scores,
    "mmstar": mmstar_scores,
    "mmbench": mmbench_scores,
    "3dsrbench": threedsr_scores,
}


def aggregate(name: str, pairs: Pairs) -> dict[str, float | None]:
    """Official scores for benchmark `name` (plain accuracy only where there is no special formula)."""
    fn = AGGREGATES.get(name)
    return fn(pairs) if fn else {"accuracy": accuracy(pairs)}
