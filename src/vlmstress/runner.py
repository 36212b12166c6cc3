"""The evaluation runner: Sample x variant -> Prompt -> model -> parse -> judge -> Record.

records.jsonl is the run log every report is computed from. Each batch's records are appended and
fsynced as soon as the batch finishes, then the log's new length is committed to a small side file
(`.records.commit`). A rerun with the same `--out` cuts the log back to the committed length, so a
crash loses at most the batch in flight and never leaves part of one behind: the resumed run redoes
that batch whole, with the same prompts batched together, and so writes the same bytes an
uninterrupted run would (batch composition changes padding, and padding changes the floats).
A lock file keeps a second live process from interleaving records into the same directory, and a
rerun whose model, model options, data, seed, template, token budget or judges differ from the log's
is refused. The same engine also runs over an in-memory log (`run_in_memory`) for the Python API.
See docs/reliability.md. Several processes share one run through shard.py (docs/scaling.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError
from vlmstress.judge.base import Judge, JudgeItem, Verdict
from vlmstress.metrics import compute_metrics, letter_entropy, p_correct, summary_markdown
from vlmstress.models.base import VLM, Generation
from vlmstress.parse import grade_open, parse, think_source
from vlmstress.perturb import TEMPLATES, NotApplicable, Prompt, perturb

RECORDS = "records.jsonl"
COMMIT = ".records.commit"
# How the error records of what never reached the model begin (the rest are failed model calls).
SAMPLE_ERROR = "sample: "
NOT_APPLICABLE = "not applicable: "
# What the records of a run depend on: a rerun that changes one of these must not resume the log.
# (variants and limit may grow on a rerun; batch_size is left free though it moves floats slightly.)
IDENTITY = ("model", "model_options", "data", "seed", "template", "max_new_tokens", "judges")
# The files the runner writes with write_atomic.
RUN_FILES = ("config.json", "metrics.json", "summary.md", COMMIT)


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


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file: it sees the old file or
    the new one. The directory is fsynced too, so the rename itself survives a power cut."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flock_or_refuse(f, message: str) -> None:
    """Take an exclusive flock on open file `f` at once, or refuse with a UsageError (one line)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(message) from None


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out` for this process (flock, so the kernel releases it when the holder dies, however it
    dies). A UsageError when another process holds it, or still writes a shard there (a rank of a
    sharded run that outlived its rank 0, shard.py); nesting in one process is refused the same way."""
    from vlmstress.shard import check_no_live_shard_writers  # here: shard.py builds on this module

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as f:
        flock_or_refuse(f, f"another vlmstress process is writing to {out}; wait for it or use another --out")
        try:
            check_no_live_shard_writers(out)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """The records of a run log; a torn last line (a crash mid-write) is dropped.

    With `repair` (the resuming runner, under the lock) the file is also cut back to the length last
    committed to `.records.commit`, or, without a usable commit, to its last whole line, so that
    appends continue from a clean batch boundary.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if repair:
        good_end = min(good_end, _committed_length(path, data))
    records = []
    for number, line in enumerate(data[:good_end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:  # not a torn write (that is only ever the last line): damage
            raise ValueError(f"{path} line {number} is not JSON ({e})") from None
    if repair and good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return records


def commit_path(log: Path) -> Path:
    """The commit file of a log: `.records.commit` beside records.jsonl (COMMIT), and likewise
    `.records.rank0-of2.commit` beside a shard of a sharded run (shard.py)."""
    return log.with_name(f".{log.stem}.commit")


def _committed_length(log: Path, data: bytes) -> int:
    """The log length of the last committed batch; len(data) when there is no usable commit (a log
    written before commits existed, or by hand), so only the torn-line rule applies."""
    try:
        commit = json.loads(commit_path(log).read_text())
        size, lines = int(commit["bytes"]), int(commit["lines"])
    except (OSError, ValueError, KeyError, TypeError):
        return len(data)
    # A commit that does not describe a prefix of this log (the log was replaced) is ignored.
    if size > len(data) or (size and data[size - 1 : size] != b"\n") or data[:size].count(b"\n") != lines:
        return len(data)
    return size


def error_record(sample: Sample, variant: str, error: str, prompt: Prompt | None = None) -> dict:
    return {
        "sample_id": sample.sample_id,
        "variant": variant,
        "target": sample.target,
        "misleading": prompt.misleading if prompt else None,
        "response": None,
        "prefill": prompt.prefill if prompt else None,
        "think": None,
        "answer": None,
        "parsed": False,
        "correct": False,
        "letter_probs": None,
        "entropy": None,
        "p_correct": None,
        "score_source": None,
        "judge": None,
        "error": error,
        "family": sample.family,
        "n_tokens": 0,
        "prefill_mode": None,
        "think_source": None,
    }


def make_record(sample: Sample, prompt: Prompt, gen: Generation, verdicts: list[Verdict]) -> dict:
    if gen.error:
        return error_record(sample, prompt.variant, gen.error, prompt)
    parsed = parse(prompt.prefill + gen.text, prompt.options)
    if sample.is_open_ended:
        correct = grade_open(parsed.answer_text, sample.answer_text or "")
    else:
        correct = parsed.answer is not None and parsed.answer == prompt.target
    probs = gen.letter_probs
    meta = {k: v for k, v in gen.meta.items() if not (k == "prefill_mode" and not prompt.prefill)}
    record = {
        "sample_id": sample.sample_id,
        "variant": prompt.variant,
        "target": prompt.target,
        "misleading": prompt.misleading,
        "response": gen.text,
        "prefill": prompt.prefill,
        "think": parsed.think,
        "answer": parsed.answer,
        "parsed": parsed.parsed,
        "correct": bool(correct),
        "letter_probs": probs,
        "entropy": letter_entropy(probs) if probs else None,
        "p_correct": p_correct(probs, prompt.target) if probs and prompt.target else None,
        "score_source": gen.score_source if probs else None,
        "judge": verdicts[0].to_json() if verdicts else None,
        "error": None,
        "family": sample.family,
        "n_tokens": gen.n_tokens,
        # Where the prefill went (in-process backends always continue the model's own turn; a
        # server may have put it in the user turn) and where the think was read from.
        "prefill_mode": meta.pop("prefill_mode", "assistant") if prompt.prefill else None,
        "think_source": meta.pop("think_source", None) or think_source(gen.text, prompt.prefill),
    }
    if len(verdicts) > 1:
        record["judges"] = [v.to_json() for v in verdicts]
    if meta:  # anything else a backend says about how it answered
        record["meta"] = meta
    return record


def judge_batch(
    judges: Sequence[Judge], prompts: Sequence[Prompt], gens: Sequence[Generation], questions: Sequence[str]
) -> list[list[Verdict]]:
    """Every judge's verdict for every generation in the batch (errors never reach a judge)."""
    items = []
    for p, g, q in zip(prompts, gens, questions):
        parsed = parse(p.prefill + g.text, p.options) if not g.error else None
        items.append(
            JudgeItem(q, p.options, parsed.think if parsed else None, parsed.answer if parsed else None)
        )
    per_judge = []
    for judge in judges:
        try:
            per_judge.append(judge.judge(items))
        except Exception:  # a judge that fails says error, never consistent; the run goes on
            per_judge.append([Verdict("error", None, judge.name)] * len(items))
    return [[pj[i] for pj in per_judge] for i in range(len(items))]


def plan(
    samples: Sequence[Sample], variants: Sequence[str], seed: int, template: str, done: set[tuple[str, str]]
) -> tuple[list[tuple[Sample, Prompt]], list[dict]]:
    """The prompts still to run, and the error records of what cannot run at all."""
    todo, errors = [], []
    tpl = TEMPLATES[template]
    for variant in variants:
        for s in samples:
            if (s.sample_id, variant) in done:
                continue
            if s.error:
                errors.append(error_record(s, variant, f"{SAMPLE_ERROR}{s.error}"))
                continue
            try:
                todo.append((s, perturb(s, variant, seed, tpl)))
            except NotApplicable as e:
                errors.append(error_record(s, variant, f"{NOT_APPLICABLE}{e}"))
    return todo, errors


def failed_call(record: dict) -> bool:
    """Whether a record is the error of a model call (a timeout, a refused request, an unreadable
    image), which another attempt may get past; not one of a broken sample or an inapplicable variant."""
    error = record.get("error")
    return error is not None and not error.startswith((SAMPLE_ERROR, NOT_APPLICABLE))


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
) -> dict:
    """Evaluate `model` on `samples` under `spec.variants`; resumable; returns the metrics.

    `locked` says the caller already holds `run_lock(out)` (the command line takes it before the
    slow model load, so a second process is refused at once). A resume keeps every record, failed
    model calls too; `retry_failed` makes those calls again (`drop_failed`).
    """
    out = Path(out)
    with nullcontext() if locked else run_lock(out):
        check_same_run(out, spec)
        from vlmstress import shard  # imported here: shard.py builds on this module

        if shard.shard_files(out):  # left by a sharded run: resume it here, then merge its shards
            return shard.run_rank(
                model,
                samples,
                spec,
                out,
                judges=judges,
                progress=progress,
                on_batch=on_batch,
                retry_failed=retry_failed,
            )
        remove_stale_temps(out)
        path = out / RECORDS
        records = read_records(path, repair=True)
        if retry_failed:
            records = drop_failed(path, records)
        done = {(r["sample_id"], r["variant"]) for r in records}
        todo, errors = plan(samples, spec.variants, spec.seed, spec.template, done)
        write_atomic(out / "config.json", config_text(spec, samples))
        with _Log(path) as log:
            log.append(errors)
            _generate_all(model, todo, spec, judges, log, progress, on_batch)
        return finish_run(samples, spec, out)


def remove_stale_temps(out: Path) -> None:
    """Temp files of a process killed inside write_atomic."""
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.tmp[0-9]*"):
            stale.unlink(missing_ok=True)


def finish_run(samples: Sequence[Sample], spec: RunSpec, out: Path) -> dict:
    """metrics.json and summary.md from the finished records.jsonl; returns the metrics."""
    metrics = run_metrics(samples, spec, run_records(samples, spec, out))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    write_atomic(out / "summary.md", summary_markdown(metrics))
    return metrics


def run_records(samples: Sequence[Sample], spec: RunSpec, out: Path) -> list[dict]:
    """The records of this command in the log of `out`, in log order: records a wider earlier run
    left there (more variants, a higher limit) stay in the log but describe another command."""
    wanted = {(s.sample_id, v) for s in samples for v in spec.variants}
    return [r for r in read_records(out / RECORDS) if (r["sample_id"], r["variant"]) in wanted]


def run_metrics(samples: Sequence[Sample], spec: RunSpec, records: list[dict]) -> dict:
    """The metrics.json object of a run's records."""
    metrics = compute_metrics(
        records, model=spec.model, data=spec.data, n_samples=len(samples), seed=spec.seed
    )
    metrics["families"] = family_accuracy(records)
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
) -> tuple[list[dict], dict]:
    """run_eval's engine over a log held in memory: the records and metrics, and no file written."""
    todo, errors = plan(samples, spec.variants, spec.seed, spec.template, set())
    log = _MemoryLog()
    log.append(errors)
    _generate_all(model, todo, spec, judges, log, progress, None)
    return log.records, run_metrics(samples, spec, log.records)


def check_same_run(out: Path, spec: RunSpec) -> None:
    """Refuse to resume a log written by a different run: its records would be mixed into ours."""
    try:
        before = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(before, dict) or not _has_records(out):
        return
    changed = [k for k in IDENTITY if k in before and before[k] != getattr(spec, k)]
    if changed:
        raise UsageError(
            f"{out} holds a run with a different {', '.join(changed)}; use another --out "
            "(or delete the directory to start over)"
        )


def _has_records(out: Path) -> bool:
    """Whether `out` holds records: in records.jsonl, or in the shards of a sharded run."""
    from vlmstress.shard import shard_files

    return any(p.exists() and p.stat().st_size for p in (out / RECORDS, *shard_files(out)))


class _Log:
    """records.jsonl (or a shard) opened for appending. Each `append` is one batch: written, fsynced,
    and then committed to its commit file, so a resume can cut off a batch only partly written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = path.read_bytes().count(b"\n") if path.exists() else 0

    def __enter__(self) -> _Log:
        self.file = self.path.open("a", encoding="utf-8")
        self._commit()  # a log that predates commits gets one before anything is appended
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.file.write("".join(json.dumps(r) + "\n" for r in records))
        self.lines += len(records)
        self._commit()

    def _commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        size = os.fstat(self.file.fileno()).st_size
        write_atomic(commit_path(self.path), json.dumps({"bytes": size, "lines": self.lines}))


def preflight(model: VLM, todo: Sequence[tuple[Sample, Prompt]]) -> None:
    """Before the first prompt, a backend that can (a server) says what it will cost this run's
    fidelity (prefills in the user turn, no letter probabilities): one warning line each, on the
    `vlmstress` logger, which the command line prints as `vlmstress: warning: ...`."""
    check = getattr(model, "preflight", None)
    if todo and check is not None:
        for line in check():
            logging.getLogger("vlmstress").warning(line)


class _MemoryLog:
    """What _generate_all needs of a log, kept in a list: nothing to commit, nothing to resume."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, records: list[dict]) -> None:
        self.records.extend(records)


def _generate_all(model, todo, spec, judges, log: _Log | _MemoryLog, progress, on_batch) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    preflight(model, todo)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress or not todo, transient=False) as bar:
        task = bar.add_task(f"eval {spec.model}", total=len(todo))
        for start in range(0, len(todo), spec.batch_size):
            chunk = todo[start : start + spec.batch_size]
            samples, prompts = [c[0] for c in chunk], [c[1] for c in chunk]
            t0 = time.perf_counter()
            gens = model.generate(prompts, max_new_tokens=spec.max_new_tokens)
            model_seconds = time.perf_counter() - t0
            verdicts = judge_batch(judges, prompts, gens, [s.question for s in samples])
            log.append([make_record(s, p, g, v) for s, p, g, v in zip(samples, prompts, gens, verdicts)])
            bar.advance(task, len(chunk))
            if on_batch:
                on_batch(len(chunk), model_seconds)


def family_accuracy(records: list[dict]) -> dict[str, dict[str, dict]]:
    """Per variant, per task family: n and accuracy (and the most-common-letter baseline)."""
    from collections import Counter, defaultdict

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
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


def official_scores(data: str, samples: Sequence[Sample], records: list[dict]) -> dict[str, dict] | None:
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
