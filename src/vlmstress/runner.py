"""The evaluation runner: Sample x variant -> Prompt -> model -> parse -> judge -> Record.

records.jsonl is the run log every report is computed from. Each batch's records are appended and
fsynced as soon as the batch finishes, then the log's new length is committed to a small side file
(`.records.commit`). A rerun with the same `--out` cuts the log back to the committed length, so a
crash loses at most the batch in flight and never leaves part of one behind: the resumed run redoes
that batch whole, with the same prompts batched together, and so writes the same bytes an
uninterrupted run would (batch composition changes padding, and padding changes the floats).
A lock file keeps a second live process from interleaving records into the same directory, and a
rerun whose model, model options, data, seed, template, token budget, judges, answer extractor or
system prompt differ from the log's is refused. The log discipline itself (append, commit, lock,
read) is runlog.py.

One engine runs every evaluation: `run_rank`, rank `rank` of a `world`-process run. A sharded run
(shard.py launches it under torchrun / accelerate, docs/scaling.md) has each rank write a shard
that rank 0 merges into records.jsonl; `run_eval`, the single-process run, is its one-rank case,
which appends to records.jsonl itself (its log is the merged log; it writes a shard only to finish
the shards a sharded run left). The same engine also runs over an in-memory log (`run_in_memory`)
for the Python API. Each record is a schema.Record carrying the prompt it answered. See
docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmstress.data.schema import Record, RenderedPrompt, Sample
from vlmstress.errors import UsageError
from vlmstress.extract import Extraction, ExtractItem, Extractor
from vlmstress.judge.base import Judge, JudgeItem, Verdict
from vlmstress.metrics import RecordSummary, compute_metrics, letter_entropy, p_correct, summarize
from vlmstress.models.base import VLM, Generation
from vlmstress.parse import Parsed, after_think, grade_open, parse, think_source
from vlmstress.perturb import TEMPLATES, NotApplicable, Prompt, perturb, with_system
from vlmstress.report.summary import summary_markdown
from vlmstress.runlog import (
    RECORDS,
    SHARDS,
    Log,
    commit_path,
    fsync_dir,
    iter_records,
    rank_lock,
    read_records,
    remove_stale_temps,
    run_lock,
    shard_files,
    shard_path,
    write_atomic,
)

# How the error records of what never reached the model begin (the rest are failed model calls).
SAMPLE_ERROR = "sample: "
NOT_APPLICABLE = "not applicable: "
# What the records of a run depend on: a rerun that changes one of these must not resume the log.
# (variants and limit may grow on a rerun; batch_size is left free though it moves floats slightly.)
IDENTITY = (
    "model",
    "model_options",
    "data",
    "seed",
    "template",
    "max_new_tokens",
    "judges",
    "system",
    "extract",
)


@dataclass
class RunSpec:
    """Everything that defines a run; written to config.json (no secrets: SPECs carry none, and
    `model_options` are the backend options as redacted by registry.redact_options)."""

    model: str
    data: str
    variants: list[str]
    judges: list[str] = field(default_factory=lambda: ["rule"])
    seed: int = 0
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 96
    template: str = "vlmstress"
    data_dir: str | None = None
    model_options: dict = field(default_factory=dict)
    system: str | None = None  # the system turn of every prompt (models/system_prompts.py)
    extract: str | None = None  # the answer extractor of what the rules cannot parse (extract.py)


def config_text(spec: RunSpec, samples: Sequence[Sample]) -> str:
    """config.json: the run's spec, its sample count and the versions of the libraries that shaped
    its numbers (versions are recorded, not compared: an upgrade may resume a run)."""
    return json.dumps({**spec.__dict__, "n_samples": len(samples), "versions": library_versions()}, indent=2)


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from vlmstress import __version__

    versions: dict[str, str | None] = {"vlmstress": __version__}
    for name in ("torch", "transformers", "trl"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def error_record(sample: Sample, variant: str, error: str, prompt: Prompt | None = None) -> Record:
    """The record of what got no answer: a broken sample or a variant that does not apply (nothing
    asked, no prompt), or a failed model call (the prompt it asked)."""
    return Record(
        sample_id=sample.sample_id,
        variant=variant,
        target=sample.target,
        misleading=prompt.misleading if prompt else None,
        response=None,
        prefill=prompt.prefill if prompt else None,
        think=None,
        answer=None,
        parsed=False,
        correct=False,
        letter_probs=None,
        entropy=None,
        p_correct=None,
        score_source=None,
        judge=None,
        error=error,
        family=sample.family,
        difficulty=sample_difficulty(sample),
        n_tokens=0,
        prefill_mode=None,
        think_source=None,
        parse_mode=None,
        prompt=RenderedPrompt.of(prompt) if prompt else None,
    )


def make_record(
    sample: Sample,
    prompt: Prompt,
    gen: Generation,
    verdicts: list[Verdict],
    extraction: Extraction | None = None,
) -> Record:
    if gen.error:
        return error_record(sample, prompt.variant, gen.error, prompt)
    parsed = parse(prompt.prefill + gen.text, prompt.options)
    answer, parse_mode = read_answer(parsed, extraction)
    if sample.is_open_ended:
        correct = grade_open(parsed.answer_text, sample.answer_text or "")
    else:
        correct = answer is not None and answer == prompt.target
    probs = gen.letter_probs
    meta = {k: v for k, v in gen.meta.items() if not (k == "prefill_mode" and not prompt.prefill)}
    return Record(
        sample_id=sample.sample_id,
        variant=prompt.variant,
        target=prompt.target,
        misleading=prompt.misleading,
        response=gen.text,
        prefill=prompt.prefill,
        think=parsed.think,
        answer=answer,
        parsed=parse_mode is not None,
        correct=bool(correct),
        letter_probs=probs,
        entropy=letter_entropy(probs) if probs else None,
        p_correct=p_correct(probs, prompt.target) if probs and prompt.target else None,
        score_source=gen.score_source if probs else None,
        judge=verdicts[0] if verdicts else None,
        error=None,
        family=sample.family,
        difficulty=sample_difficulty(sample),
        n_tokens=gen.n_tokens,
        # Where the prefill went (in-process backends always continue the model's own turn; a
        # server may have put it in the user turn) and where the think was read from.
        prefill_mode=meta.pop("prefill_mode", "assistant") if prompt.prefill else None,
        think_source=meta.pop("think_source", None) or think_source(gen.text, prompt.prefill),
        parse_mode=parse_mode,  # strict, lenient, extract, or null: unparsed
        extraction=extraction,  # the extractor was asked: what it read, or why it could not
        judges=tuple(verdicts) if len(verdicts) > 1 else None,
        meta=meta or None,  # anything else a backend says about how it answered
        prompt=RenderedPrompt.of(prompt),
    )


def read_answer(parsed: Parsed, extraction: Extraction | None) -> tuple[str | None, str | None]:
    """(answer, parse_mode) of a record: the rules' reading, else the extractor's letter (it is
    asked only where the rules found none), else (None, None)."""
    if parsed.mode is None and extraction is not None and extraction.answer is not None:
        return extraction.answer, "extract"
    return parsed.answer, parsed.mode


def extract_batch(
    extractor: Extractor | None,
    prompts: Sequence[Prompt],
    gens: Sequence[Generation],
    questions: Sequence[str],
) -> list[Extraction | None]:
    """The extractor's reading of each multiple-choice completion the rules could not parse and
    that says something after its think; None for the others (not asked). A failing extractor
    fails its extractions, never the run."""
    if extractor is None:
        return [None] * len(prompts)
    asked: dict[int, ExtractItem] = {}
    for i, (p, g, q) in enumerate(zip(prompts, gens, questions, strict=True)):
        if g.error or not p.options:
            continue
        text = p.prefill + g.text
        response = after_think(text)
        if parse(text, p.options).mode is None and response.strip():
            asked[i] = ExtractItem(q, p.options, response)
    out: list[Extraction | None] = [None] * len(prompts)
    if asked:
        try:
            found = extractor.extract(list(asked.values()))
            if len(found) != len(asked):
                raise ValueError(f"{len(found)} extractions of {len(asked)} completions")
        except Exception as exc:
            found = [Extraction(None, extractor.name, f"{type(exc).__name__}: {exc}")] * len(asked)
        for i, extraction in zip(asked, found, strict=True):
            out[i] = extraction
    return out


def judge_batch(
    judges: Sequence[Judge],
    prompts: Sequence[Prompt],
    gens: Sequence[Generation],
    questions: Sequence[str],
    extractions: Sequence[Extraction | None] | None = None,
) -> list[list[Verdict]]:
    """Every judge's verdict for every generation in the batch (errors never reach a judge); an
    answer only the extractor read is the answer judged, as it is the record's."""
    items = []
    for i, (p, g, q) in enumerate(zip(prompts, gens, questions)):
        parsed = parse(p.prefill + g.text, p.options) if not g.error else None
        answer = read_answer(parsed, extractions[i] if extractions else None)[0] if parsed else None
        items.append(JudgeItem(q, p.options, parsed.think if parsed else None, answer))
    per_judge = []
    for judge in judges:
        try:
            per_judge.append(judge.judge(items))
        except Exception:  # a judge that fails says error, never consistent; the run goes on
            per_judge.append([Verdict("error", None, judge.name)] * len(items))
    return [[pj[i] for pj in per_judge] for i in range(len(items))]


class Todo(Sequence):
    """The prompts still to run, in plan order, as (Sample, Prompt) pairs made when they are read:
    the plan itself holds one integer a prompt, so a run never holds more Prompts than the batch
    in hand (`_generate_all` reads one batch at a time). A slice is a Todo too."""

    def __init__(
        self,
        samples: Sequence[Sample],
        variants: Sequence[str],
        seed: int,
        template: str,
        items: array,
        system: str | None = None,
    ) -> None:
        self.samples, self.variants, self.seed, self.template = samples, variants, seed, template
        self.items = items  # variant index * len(samples) + sample index, in plan order
        self.system = system

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.subset(self.items[i])
        v, s = divmod(self.items[i], len(self.samples))
        sample = self.samples[s]
        prompt = perturb(sample, self.variants[v], self.seed, TEMPLATES[self.template])
        return sample, with_system(prompt, self.system)

    def subset(self, items: array) -> Todo:
        return Todo(self.samples, self.variants, self.seed, self.template, items, self.system)

    def prefilled(self) -> bool:
        """Whether any prompt to run has a prefill: one prompt built per variant (a variant's
        prefill is part of what it is), not the whole plan."""
        first: dict[int, int] = {}
        for i, code in enumerate(self.items):
            first.setdefault(code // len(self.samples), i)
        return any(self[i][1].prefill for i in first.values())


def plan(
    samples: Sequence[Sample],
    variants: Sequence[str],
    seed: int,
    template: str,
    done: set[tuple[str, str]],
    system: str | None = None,
) -> tuple[Todo, list[Record]]:
    """The prompts still to run (a Todo, in the order: variant by variant, samples in order; each
    prompt with the `system` turn), and the error records of what cannot run at all. Each prompt is
    built here once to learn whether its variant applies, then dropped; the Todo builds it again
    when its batch runs."""
    items, errors = array("q"), []
    tpl = TEMPLATES[template]
    n = len(samples)
    for v, variant in enumerate(variants):
        for i, s in enumerate(samples):
            if (s.sample_id, variant) in done:
                continue
            if s.error:
                errors.append(error_record(s, variant, f"{SAMPLE_ERROR}{s.error}"))
                continue
            try:
                perturb(s, variant, seed, tpl)
            except NotApplicable as e:
                errors.append(error_record(s, variant, f"{NOT_APPLICABLE}{e}"))
                continue
            items.append(v * n + i)
    return Todo(samples, list(variants), seed, template, items, system), errors


def failed_call(record: Mapping) -> bool:
    """Whether a record is the error of a model call (a timeout, a refused request, an unreadable
    image), which another attempt may get past; not one of a broken sample or an inapplicable variant."""
    return record.get("error") is not None and not planned_error(record)


def planned_error(record: Mapping) -> bool:
    """Whether a record is one `plan` made: of a broken sample or an inapplicable variant, written
    before any prompt runs."""
    error = record.get("error")
    return error is not None and error.startswith((SAMPLE_ERROR, NOT_APPLICABLE))


def drop_failed(path: Path, records: list[dict]) -> list[dict]:
    """Take the records of failed model calls out of a log, so that the run makes those calls again;
    `records` are the log's, as `read_records(path, repair=True)` returned them under the run lock.
    Returns the records kept. The log is replaced whole (write_atomic), then its commit: a crash
    between the two leaves a commit that does not describe the new log, which `_committed_length`
    then ignores."""
    kept = [r for r in records if not failed_call(r)]
    if len(kept) < len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(path, text)
        write_atomic(commit_path(path), json.dumps({"bytes": len(text.encode()), "lines": len(kept)}))
    return kept


def run_eval(
    model: VLM,
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    judges: Sequence[Judge] = (),
    progress: bool = True,
    on_batch: Callable[[int, float], None] | None = None,
    locked: bool = False,
    retry_failed: bool = False,
    log: Callable[[str], None] | None = None,
    extractor: Extractor | None = None,
) -> dict:
    """Evaluate `model` on `samples` under `spec.variants`; resumable; returns the metrics. The
    run is the engine's one-rank case (`run_rank` with world 1), under the run lock.

    `locked` says the caller already holds `run_lock(out)` (the command line takes it before the
    slow model load, so a second process is refused at once). A resume keeps every record, failed
    model calls too; `retry_failed` makes those calls again (`drop_failed`). `log` is told how much
    of the run a resume found done. `extractor` (the one `spec.extract` names) reads the answers
    the rules cannot.
    """
    out = Path(out)
    with nullcontext() if locked else run_lock(out):
        check_same_run(out, spec)
        metrics = run_rank(
            model,
            samples,
            spec,
            out,
            judges=judges,
            progress=progress,
            on_batch=on_batch,
            retry_failed=retry_failed,
            extractor=extractor,
            log=log,
        )
    assert metrics is not None  # rank 0 of 1
    return metrics


def resumed_line(samples: Sequence[Sample], variants: Sequence[str], done: Iterable[tuple[str, str]]) -> str:
    """What a rerun says first: how many of this command's records an earlier run already wrote."""
    wanted = {(s.sample_id, v) for s in samples for v in variants}
    return f"resumed: {len(wanted & set(done))} of {len(wanted)} records already done"


def finish_run(samples: Sequence[Sample], spec: RunSpec, out: Path) -> dict:
    """metrics.json and summary.md from the finished records.jsonl; returns the metrics. The log is
    read a line at a time and only each record's RecordSummary is kept (run_summaries)."""
    metrics = run_metrics(samples, spec, run_summaries(samples, spec, out))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    write_atomic(out / "summary.md", summary_markdown(metrics))
    return metrics


def run_records(samples: Sequence[Sample], spec: RunSpec, out: Path) -> list[Record]:
    """The records of this command in the log of `out`, in log order: records a wider earlier run
    left there (more variants, a higher limit) stay in the log but describe another command."""
    return [Record.from_json(r) for r in _this_command(samples, spec, out)]


def run_summaries(samples: Sequence[Sample], spec: RunSpec, out: Path) -> list[RecordSummary]:
    """run_records' records as the compact summaries the metrics read (metrics.RecordSummary)."""
    strings = {s.sample_id: s.sample_id for s in samples}  # the summaries share the samples' ids
    return [summarize(r, strings) for r in _this_command(samples, spec, out)]


def _this_command(samples: Sequence[Sample], spec: RunSpec, out: Path) -> Iterable[dict]:
    # (sample, variant) is wanted when both are: no set of every pair is built.
    ids, variants = {s.sample_id for s in samples}, set(spec.variants)
    return (r for r in iter_records(out / RECORDS) if r["sample_id"] in ids and r["variant"] in variants)


def run_metrics(samples: Sequence[Sample], spec: RunSpec, records: Sequence[Mapping]) -> dict:
    """The metrics.json object of a run's records."""
    metrics = compute_metrics(
        records, model=spec.model, data=spec.data, n_samples=len(samples), seed=spec.seed
    )
    metrics["families"] = family_accuracy(records)
    difficulties = difficulty_slices(records)
    if difficulties:
        metrics["difficulties"] = difficulties
    official = official_scores(spec.data, samples, records)
    if official:
        metrics["official"] = official
    return metrics


def run_in_memory(
    model: VLM,
    samples: Sequence[Sample],
    spec: RunSpec,
    *,
    judges: Sequence[Judge] = (),
    progress: bool = False,
    extractor: Extractor | None = None,
) -> tuple[list[Record], dict]:
    """run_eval's engine over a log held in memory: the records and metrics, and no file written."""
    todo, records = plan(samples, spec.variants, spec.seed, spec.template, set(), spec.system)
    _generate_all(model, todo, spec, judges, records.extend, progress, None, extractor)
    return records, run_metrics(samples, spec, records)


def check_same_run(out: Path, spec: RunSpec) -> None:
    """Refuse to resume a log written by a different run: its records would be mixed into ours."""
    try:
        before = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(before, dict) or not _has_records(out):
        return
    # A log from before system prompts (or extractors) were recorded was made without one.
    before.setdefault("system", None)
    before.setdefault("extract", None)
    changed = [k for k in IDENTITY if k in before and before[k] != getattr(spec, k)]
    if changed:
        raise UsageError(
            f"{out} holds a run with a different {', '.join(changed)}; use another --out "
            "(or delete the directory to start over)"
        )


def _has_records(out: Path) -> bool:
    """Whether `out` holds records: in records.jsonl, or in the shards of a sharded run."""
    return any(p.exists() and p.stat().st_size for p in (out / RECORDS, *shard_files(out)))


def preflight(model: VLM, todo: Todo) -> None:
    """Before the first prompt, a backend that can (a server) says what it will cost this run's
    fidelity (prefills in the user turn, no letter probabilities): one warning line each, on the
    `vlmstress` logger, which the command line prints as `vlmstress: warning: ...`."""
    check = getattr(model, "preflight", None)
    if todo and check is not None:
        for line in check(prefilled=todo.prefilled()):
            logging.getLogger("vlmstress").warning(line)


def _generate_all(
    model,
    todo,
    spec,
    judges,
    emit: Callable[[list[Record]], None],
    progress,
    on_batch,
    extractor: Extractor | None = None,
) -> None:
    """Run `todo` a batch at a time; `emit` takes each batch's records (appends them to a log)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    preflight(model, todo)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    # Redrawn when a batch finishes, not by rich's 10 Hz refresh thread, which took ~6% of the CPU of a
    # tiny-model run (and the GIL from the Python that drives `generate`).
    with Progress(*columns, disable=not progress or not todo, transient=False, auto_refresh=False) as bar:
        task = bar.add_task(f"eval {spec.model}", total=len(todo))
        for start in range(0, len(todo), spec.batch_size):
            chunk = list(todo[start : start + spec.batch_size])  # this batch's prompts are built here
            samples, prompts = [c[0] for c in chunk], [c[1] for c in chunk]
            t0 = time.perf_counter()
            gens = model.generate(prompts, max_new_tokens=spec.max_new_tokens)
            model_seconds = time.perf_counter() - t0
            questions = [s.question for s in samples]
            # Extraction first: an answer only the extractor read is the one the judges judge.
            found = extract_batch(extractor, prompts, gens, questions)
            verdicts = judge_batch(judges, prompts, gens, questions, found)
            emit([make_record(*row) for row in zip(samples, prompts, gens, verdicts, found)])
            bar.update(task, advance=len(chunk), refresh=True)
            if on_batch:
                on_batch(len(chunk), model_seconds)
            del chunk, samples, prompts, gens, verdicts, found  # before the next batch's prompts are built


def family_accuracy(records: Sequence[Mapping]) -> dict[str, dict[str, dict]]:
    """Per variant, per task family: n and accuracy (and the most-common-letter baseline)."""
    from collections import Counter, defaultdict

    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for r in records:
        if r.get("error") is None and r.get("family"):
            groups[(r["variant"], r["family"])].append(r)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (variant, family), rs in groups.items():
        targets = Counter(r["target"] for r in rs if r["target"])
        out[variant][family] = {
            "n": len(rs),
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "most_common_letter_baseline": max(targets.values()) / len(rs) if targets else None,
        }
    return dict(out)


def sample_difficulty(sample: Sample) -> str | None:
    """The sample's difficulty level where its benchmark grades one (synth: "easy" / "hard"), else None."""
    level = (sample.facts or {}).get("difficulty")
    return level if isinstance(level, str) else None


def difficulty_slices(records: Sequence[Mapping]) -> dict[str, dict[str, dict]]:
    """Per variant, per difficulty level (records that have one): n, accuracy, and the mean letter
    entropy and P(correct) over the records with letter probabilities (null when none has them)."""
    from collections import defaultdict

    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for r in records:
        if r.get("error") is None and r.get("difficulty"):
            groups[(r["variant"], r["difficulty"])].append(r)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (variant, level), rs in sorted(groups.items()):
        scored = [(r["letter_probs"], r["target"]) for r in rs if r.get("letter_probs")]
        entropies = [letter_entropy(probs) for probs, _ in scored]
        p_right = [p for probs, target in scored if (p := p_correct(probs, target)) is not None]
        out[variant][level] = {
            "n": len(rs),
            "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
            "mean_entropy": sum(entropies) / len(entropies) if entropies else None,
            "mean_p_correct": sum(p_right) / len(p_right) if p_right else None,
        }
    return dict(out)


def official_scores(
    data: str, samples: Sequence[Sample], records: Sequence[Mapping]
) -> dict[str, dict] | None:
    """Per variant, a benchmark's official aggregate (CV-Bench's source-weighted mean, MMStar's
    category mean, MMBench / 3DSRBench circular scores) beside the plain accuracy."""
    from vlmstress.data.benchmarks import BENCHMARKS, aggregate

    if data not in BENCHMARKS:
        return None
    meta = {s.sample_id: s.meta for s in samples}
    by_variant: dict[str, list] = {}
    for r in records:
        if r.get("error") is None and r["sample_id"] in meta:
            by_variant.setdefault(r["variant"], []).append((meta[r["sample_id"]], bool(r["correct"])))
    return {variant: aggregate(data, pairs) for variant, pairs in by_variant.items()}


# -- several processes: the engine of a sharded run (shard.py launches it) ----------------

Key = tuple[str, str]


def batches(items: Sequence[Any], batch_size: int) -> list[Sequence[Any]]:
    """`items` cut into consecutive batches, as runner._generate_all cuts them."""
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def assign(n_batches: int, rank: int, world: int) -> list[int]:
    """The batches rank `rank` of `world` runs: j with j % world == rank (round robin, so every rank
    gets an equal share of each variant's prompts, whatever their cost)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(range(rank, n_batches, world))


def record_key(record: Mapping) -> Key:
    return record["sample_id"], record["variant"]


def merge_records(
    existing: Iterable[Key], shards: Iterable[Iterable[dict]], order: Sequence[Key]
) -> list[dict]:
    """The shard records to append to a log that holds the keys `existing`.

    Each (sample, variant) once: one already in the log is left out, and of several shard copies
    (a rerun after a crash between merging and deleting the shards) the first is kept. Sorted by
    `order` (the keys in the order one process would have written them); keys not in `order` (a wider
    earlier run's) come last, in shard order.
    """
    seen = set(existing)
    new = []
    for records in shards:
        for r in records:
            key = record_key(r)
            if key not in seen:
                seen.add(key)
                new.append(r)
    position = {key: i for i, key in enumerate(order)}
    return sorted(new, key=lambda r: position.get(record_key(r), len(position)))


def done_keys(out: Path) -> set[Key]:
    """The (sample, variant) pairs finished in records.jsonl or in any shard."""
    done = {record_key(r) for r in read_records(out / RECORDS)}
    for path in shard_files(out):
        done.update(record_key(r) for r in read_records(path))
    return done


def prepare(out: Path, *, retry_failed: bool = False) -> set[Key]:
    """Rank 0, holding the run lock (which saw no live shard writer), before any rank reads: remove
    temp-file debris and cut records.jsonl and every shard back to their last commit (so all ranks
    read whole batches); with `retry_failed`, take the failed model calls out of them all. Returns
    what is done then (done_keys), read on the way."""
    remove_stale_temps(out)
    for stale in (out / SHARDS).glob(".*.tmp[0-9]*") if (out / SHARDS).is_dir() else ():
        stale.unlink(missing_ok=True)
    done: set[Key] = set()
    for path in (out / RECORDS, *shard_files(out)):
        records = read_records(path, repair=True)
        if retry_failed:
            records = drop_failed(path, records)
        done.update(record_key(r) for r in records)
    return done


def merge_shards(out: Path, samples: Sequence[Sample], spec: RunSpec) -> int:
    """Rank 0, every rank finished: append the shards' records to records.jsonl, then delete the
    shards. Returns the number of records appended.

    A crash before the append is committed leaves the shards (the next run cuts records.jsonl back
    and merges again); a crash after it leaves shards whose records are all in the log already.
    """
    path = out / RECORDS
    existing = {record_key(r) for r in read_records(path)}
    files = shard_files(out)
    shards = [read_records(f) for f in files]
    new = merge_records(existing, shards, one_process_order(samples, spec.variants, shards))
    with Log(path) as log:
        log.append(new)
    folder = out / SHARDS
    for f in files:
        commit_path(f).unlink(missing_ok=True)
        f.unlink()
    for f in folder.glob(".lock.rank*"):
        f.unlink(missing_ok=True)
    with suppress(OSError):  # something else was put there: leave it
        folder.rmdir()
    fsync_dir(out)
    return len(new)


def one_process_order(
    samples: Sequence[Sample], variants: Sequence[str], shards: Sequence[Sequence[Mapping]]
) -> list[Key]:
    """The keys of the shards' records in the order one process resuming the log would write them:
    first the records `plan` made (planned_error: written before any prompt runs), then the others,
    each variant by variant, samples in order. Read from the records: no prompt is built again.
    Keys outside this command (a wider earlier run's) are left out (merge_records puts them last)."""
    sample_at = {s.sample_id: i for i, s in enumerate(samples)}
    variant_at = {v: i for i, v in enumerate(variants)}
    planned: dict[Key, bool] = {}
    for records in shards:
        for r in records:
            key = record_key(r)
            if key[0] in sample_at and key[1] in variant_at:
                planned.setdefault(key, planned_error(r))  # the first copy, as merge_records keeps
    return sorted(planned, key=lambda k: (not planned[k], variant_at[k[1]], sample_at[k[0]]))


def run_rank(
    model: Any,
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    sync: Callable[[], None] = lambda: None,
    judges: Sequence = (),
    progress: bool = True,
    on_batch: Callable[[int, float], None] | None = None,
    retry_failed: bool = False,
    extractor: Extractor | None = None,
    log: Callable[[str], None] | None = None,
) -> dict | None:
    """Rank `rank` of a `world`-process run: the one engine of every run on files (run_eval is its
    one-rank case); `sync` is a barrier over all ranks. Rank 0 must hold `run_lock(out)` (and have
    checked the run's identity); it returns the metrics, the others None. `retry_failed`: as
    run_eval's (rank 0 acts on it for all); `extractor`: as run_eval's; `log`: where rank 0 says how
    much of the run was already done (the others say nothing).

    Every rank appends to a log of its own, a shard, which rank 0 merges into records.jsonl in the
    order one process would have written. One process alone with no shards to finish appends to
    records.jsonl itself: the log it writes is then the merged log, with no shard to copy."""
    out = Path(out)
    done: set[Key] | None = None
    if rank == 0:
        done = prepare(out, retry_failed=retry_failed)
        write_atomic(out / "config.json", config_text(spec, samples))
    sync()  # the logs are whole batches now
    direct = world == 1 and not shard_files(out)
    with nullcontext() if direct else rank_lock(out, rank, world):  # run_lock covers one process
        if done is None:
            done = done_keys(out)
        if rank == 0 and log is not None and done:
            log(resumed_line(samples, spec.variants, done))
        sync()  # every rank has read what is done before any rank writes more
        todo, errors = plan(samples, spec.variants, spec.seed, spec.template, done, spec.system)
        if world > 1:
            # Whole batches of the one-process plan, flattened: _generate_all cuts them back the
            # same way (every batch but the plan's last is full, and the last can only be a rank's last).
            chunks = batches(todo, spec.batch_size)
            mine = assign(len(chunks), rank, world)
            todo = todo.subset(array("q", (c for j in mine for c in chunks[j].items)))
        with Log(out / RECORDS if direct else shard_path(out, rank, world)) as rank_log:

            def emit(records: list[Record]) -> None:
                rank_log.append([r.to_json() for r in records])

            if rank == 0:
                emit(errors)
            _generate_all(model, todo, spec, judges, emit, progress, on_batch, extractor)
        sync()  # every shard is complete
    if rank != 0:
        return None
    if not direct:
        merge_shards(out, samples, spec)
    return finish_run(samples, spec, out)
