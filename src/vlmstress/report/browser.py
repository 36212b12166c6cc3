"""The sample browser: per sample, what was asked and what each run answered under each variant.

What each record was asked is its own `prompt` (the system and user turns, the options as
presented): the browser shows that. Records written before records carried their prompt have
theirs rebuilt from the sample, the run's seed and template (perturbations are pure functions), and
the page says so. Records do not carry the sample's question, options or image, so those are
recovered where that is cheap and local: synthetic samples are redrawn from their id
(`synth-{split}-{seed}-{index}`), and a run on a local data file reads it back. Nothing is fetched
from the network; a sample that cannot be found still shows its answers and the user turn its
records asked. All model text goes to the page as text (the template escapes it).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlmstress.data.schema import ImageRef, RenderedPrompt, Sample, letters
from vlmstress.metrics import quadrant as metrics_quadrant
from vlmstress.perturb import TEMPLATES, perturb, with_system
from vlmstress.report.runs import Run

MAX_SAMPLES = 200
# Answers the browser shows in all (each ~1 KB of page): a study's nine runs under nine variants
# answer 81 times per sample, and all 150 samples made a 17 MB page. The first samples whose answers
# fit are shown (never fewer than MIN_SAMPLES); the page says how many it left out.
MAX_ATTEMPTS = 2000
MIN_SAMPLES = 10
MAX_TEXT = 3000  # characters of a response or prefill shown; the rest is counted, not shown
THUMB = 128  # pixels on the longer side of a browser image (the page shows it at this size)
# Thumbnails shown per sample: MMIU items hold a dozen images and more; the rest are counted, so a
# multi-image set cannot make the page many times the size a one-image set makes it.
MAX_THUMBS = 4
JPEG_QUALITY = 80
_SYNTH_ID = re.compile(r"synth-(hard-)?(train|test|val)-(-?\d+)-(\d+)")


@dataclass(frozen=True)
class Prob:
    letter: str
    p: float
    is_target: bool
    is_answer: bool


@dataclass(frozen=True)
class Attempt:
    """One record, as the browser shows it."""

    run: int
    run_label: str
    variant: str
    # What the variant added to the user turn (a caption, an option, a user variant's hint); the
    # whole user turn where there is no base turn to compare it with (prompt_whole).
    prompt_extra: list[str]
    prompt_whole: bool
    prompt_rebuilt: bool  # the prompt was rebuilt from the sample: the record predates `prompt`
    prefill: str
    response: str
    cut: int  # characters of the response left out
    answer: str | None
    answer_text: str | None
    misleading: str | None
    correct: bool
    quadrant: str  # a metrics quadrant, or "error"
    verdict: str | None
    supports: str | None
    judge_by: str | None
    probs: list[Prob]
    error: str | None


@dataclass(frozen=True)
class SampleView:
    sample_id: str
    images: list[str | None]  # a data URI of a thumbnail per image, in order (None: unreadable)
    more_images: int  # images of the sample beyond MAX_THUMBS, counted but not shown
    question: str | None
    options: list[tuple[str, str]]
    target: str | None
    family: str | None
    attempts: list[Attempt]
    # Where the sample is not found (no question): the user turn its first recorded prompt asked.
    asked: str | None = None


def quadrant(record: dict) -> str:
    """The record's quadrant as metrics.json counts it (metrics.quadrant); an error record is shown
    as "error", being outside every quadrant."""
    return "error" if record.get("error") is not None else metrics_quadrant(record)


def synth_sample(sample_id: str) -> Sample | None:
    """A synthetic sample redrawn from its id (the generator is deterministic)."""
    match = _SYNTH_ID.fullmatch(sample_id)
    if not match:
        return None
    from vlmstress.data import synth

    hard = synth.HARD_SHARE if match.group(1) else 0.0
    split, seed, index = match.group(2), int(match.group(3)), int(match.group(4))
    return synth.make_sample(index, seed, split, hard_share=hard)


def file_samples(data: str) -> dict[str, Sample]:
    """The samples of a local data file (a run's `data`), when that file is still there."""
    path = Path(data)
    if not data or not path.is_absolute() or not path.is_file():
        return {}
    from vlmstress.data.files import load_file

    try:
        return {s.sample_id: s for s in load_file(path)}
    except Exception:  # the report must not fail because a data file changed since the run
        return {}


def thumbnails(sample: Sample | None) -> tuple[list[str | None], int]:
    """(thumbnails of the sample's first MAX_THUMBS images in order, how many more it has)."""
    images = sample.images if sample is not None else ()
    return [thumbnail_of(ref) for ref in images[:MAX_THUMBS]], max(0, len(images) - MAX_THUMBS)


def thumbnail(sample: Sample) -> str | None:
    """The thumbnail of the sample's (first) image."""
    return thumbnail_of(sample.image)


def thumbnail_of(ref: ImageRef) -> str | None:
    """A data URI of the image at most THUMB pixels on its longer side, as PNG or JPEG, whichever
    is smaller: PNG for drawn pictures (the synthetic ones: a few hundred bytes, sharp), JPEG for
    photographs (a tenth of their PNG). A small picture is kept at its own size: the page draws it
    THUMB pixels wide without smoothing, so its pixels stay visible at no cost in bytes."""
    from vlmstress.data.images import load_image

    try:
        img = load_image(ref)
    except Exception:
        return None
    if max(img.size) > THUMB:
        scale = THUMB / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    encoded = [("png", _encoded(img, "PNG", optimize=True))]
    if img.mode in ("RGB", "L"):  # JPEG has no alpha channel to keep
        encoded.append(("jpeg", _encoded(img, "JPEG", quality=JPEG_QUALITY, optimize=True)))
    kind, data = min(encoded, key=lambda e: len(e[1]))
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _cut(text: str | None) -> tuple[str, int]:
    text = text or ""
    return text[:MAX_TEXT], max(0, len(text) - MAX_TEXT)


def rebuilt_prompt(run: Run, sample: Sample, variant: str) -> RenderedPrompt | None:
    """The prompt the run built for this sample and variant, built again (perturbations are pure
    functions of the sample, the variant, the run's seed, template and system prompt), or None
    where it cannot be: for records that predate records carrying their prompt."""
    try:
        template = TEMPLATES[run.config.get("template") or "vlmstress"]
        prompt = perturb(sample, variant, int(run.config.get("seed") or 0), template)
        return RenderedPrompt.of(with_system(prompt, run.config.get("system")))
    except Exception:  # a variant or template this install does not know, or one that does not apply
        return None


def recorded_prompt(record: Mapping) -> RenderedPrompt | None:
    """The prompt a record carries (None: nothing was asked, or the record predates `prompt`)."""
    data = record.get("prompt")
    try:
        return RenderedPrompt.from_json(data) if isinstance(data, Mapping) else None
    except (KeyError, TypeError, ValueError):  # a hand-edited log: show no prompt rather than fail
        return None


def prompt_of(run: Run, record: Mapping, sample: Sample | None) -> tuple[RenderedPrompt | None, bool]:
    """(the prompt the record answered, whether it was rebuilt): the record's own; for a record
    that predates `prompt`, rebuilt from the sample where it is known."""
    if "prompt" in record:
        return recorded_prompt(record), False
    if sample is None:
        return None, False
    rebuilt = rebuilt_prompt(run, sample, record["variant"])
    return rebuilt, rebuilt is not None


def prompt_additions(prompt: RenderedPrompt | None, base: RenderedPrompt | None, variant: str) -> list[str]:
    """Lines of the user turn that base does not have: the caption, an extra option, a hint."""
    if prompt is None or base is None or variant == "base":
        return []
    plain = set(base.user.splitlines())
    return [line for line in prompt.user.splitlines() if line not in plain]


def attempt(run: Run, record: dict, sample: Sample | None, base: RenderedPrompt | None = None) -> Attempt:
    """The record as the browser shows it; `base`: the base prompt of its sample in its run (None
    where there is none), against which the record's user turn is shown as what it adds."""
    probs = record.get("letter_probs") or {}
    response, cut = _cut(record.get("response"))
    answer = record.get("answer")
    prompt, rebuilt = prompt_of(run, record, sample)
    options = prompt.options if prompt is not None else (sample.options if sample is not None else ())
    answer_text = options[letters(len(options)).index(answer)] if answer in letters(len(options)) else None
    whole = prompt is not None and base is None and record["variant"] != "base"
    extra = (
        prompt.user.splitlines() if whole and prompt else prompt_additions(prompt, base, record["variant"])
    )
    judge = record.get("judge") or {}
    return Attempt(
        run=run.index,
        run_label=run.label,
        variant=record["variant"],
        prompt_extra=extra,
        prompt_whole=whole,
        prompt_rebuilt=rebuilt,
        prefill=_cut(record.get("prefill"))[0],
        response=response,
        cut=cut,
        answer=answer,
        answer_text=answer_text,
        misleading=record.get("misleading"),
        correct=bool(record.get("correct")),
        quadrant=quadrant(record),
        verdict=judge.get("verdict"),
        supports=judge.get("supports"),
        judge_by=judge.get("by"),
        probs=[
            Prob(ltr, float(p), ltr == record.get("target"), ltr == answer)
            for ltr, p in sorted(probs.items())
        ],
        error=record.get("error"),
    )


def base_prompt(run: Run, found: Sequence[tuple[Run, dict]], sample: Sample | None) -> RenderedPrompt | None:
    """The base prompt of a sample in `run`: its base record's (recorded, or rebuilt for an older
    record), else rebuilt from the sample; None where neither is there."""
    for r, record in found:
        if r is run and record["variant"] == "base":
            prompt, _ = prompt_of(run, record, sample)
            if prompt is not None:
                return prompt
    return rebuilt_prompt(run, sample, "base") if sample is not None else None


def system_prompts(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(run label, system prompt) for each system prompt the runs' records say they were asked with
    (one a run, in practice: `--system` is part of a run's identity)."""
    out: dict[tuple[str, str], None] = {}
    for run in runs:
        for record in run.records:
            prompt = recorded_prompt(record)
            if prompt is not None and prompt.system:
                out[(run.label, prompt.system)] = None
    return list(out)


def rebuilt_runs(runs: Sequence[Run]) -> list[str]:
    """The labels of runs with records that predate `prompt` (the browser rebuilds their prompts)."""
    return [run.label for run in runs if any("prompt" not in r for r in run.records)]


def shown_ids(answers: dict[str, int], limit: int, max_attempts: int) -> list[str]:
    """The first sample ids (of `answers`: id -> its number of answers, in log order) the browser
    shows: at most `limit`, and no more than fit in `max_attempts` answers beyond MIN_SAMPLES."""
    shown: list[str] = []
    total = 0
    for sid, n in answers.items():
        if len(shown) >= limit or (len(shown) >= MIN_SAMPLES and total + n > max_attempts):
            break
        shown.append(sid)
        total += n
    return shown


def sample_views(
    runs: Sequence[Run],
    variant_order: list[str],
    limit: int = MAX_SAMPLES,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[list[SampleView], int]:
    """The first samples (in the order the runs logged them; shown_ids) and how many there are."""
    by_id: dict[str, list[tuple[Run, dict]]] = {}
    for run in runs:
        for r in run.records:
            by_id.setdefault(r["sample_id"], []).append((run, r))
    ids = list(by_id)
    shown = shown_ids({sid: len(found) for sid, found in by_id.items()}, limit, max_attempts)
    by_file: dict[str, Sample] = {}
    for data in dict.fromkeys(str(run.config.get("data") or "") for run in runs):
        by_file.update(file_samples(data))
    rank = {v: i for i, v in enumerate(variant_order)}
    views = []
    for sid in shown:
        found = sorted(by_id[sid], key=lambda rr: (rank.get(rr[1]["variant"], len(rank)), rr[0].index))
        sample = by_file.get(sid) or synth_sample(sid)
        if sample is not None and any(r.get("target") not in (None, sample.target) for _, r in found):
            sample = None  # an id that merely looks like ours: better no question than a wrong one
        target = sample.target if sample else next((r.get("target") for _, r in found), None)
        images, more_images = thumbnails(sample)
        runs_of = {run.index: run for run, _ in found}
        bases = {i: base_prompt(run, found, sample) for i, run in runs_of.items()}
        # A sample not found still has what its records asked: the base turn's options, and the
        # user turn (the question in the run's template) in place of the question.
        base = next((b for b in bases.values() if b is not None), None)
        first = base or next((p for _, r in found if (p := recorded_prompt(r)) is not None), None)
        options = sample.options if sample else (base.options if base else ())
        views.append(
            SampleView(
                sample_id=sid,
                images=images,
                more_images=more_images,
                question=sample.question if sample else None,
                options=list(zip(letters(len(options)), options, strict=True)),
                target=target,
                family=sample.family if sample else next((r.get("family") for _, r in found), None),
                attempts=[attempt(run, r, sample, bases[run.index]) for run, r in found],
                asked=None if sample or first is None else first.user,
            )
        )
    return views, len(ids)
