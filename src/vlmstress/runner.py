"""The evaluation runner: Sample x variant -> Prompt -> model -> parse -> judge -> Record.

records.jsonl is the run log every report is computed from. Each record is appended (and flushed)
as soon as its batch finishes, so a crash loses at most the batch in flight; a rerun with the same
`--out` reads the log back, drops a torn last line, and repeats no finished (sample, variant).
A lock file keeps a second live process from interleaving records into the same directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError
from vlmstress.judge.base import Judge, JudgeItem, Verdict
from vlmstress.metrics import compute_metrics, letter_entropy, p_correct, summary_markdown
from vlmstress.models.base import VLM, Generation
from vlmstress.parse import grade_open, parse
from vlmstress.perturb import TEMPLATES, NotApplicable, Prompt, perturb

RECORDS = "records.jsonl"


@dataclass
class RunSpec:
    """Everything that defines a run; written to config.json (no secrets: SPECs carry none)."""

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


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another vlmstress process is writing to {out}; wait for it or use another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """The records of a run log; a torn last line (a crash mid-write) is dropped, and cut off the
    file when `repair` is set so appends continue from a clean line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    records = []
    for line in data[:good_end].splitlines():
        if line.strip():
            records.append(json.loads(line))
    if repair and good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return records


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
    }
    if len(verdicts) > 1:
        record["judges"] = [v.to_json() for v in verdicts]
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
                errors.append(error_record(s, variant, f"sample: {s.error}"))
                continue
            try:
                todo.append((s, perturb(s, variant, seed, tpl)))
            except NotApplicable as e:
                errors.append(error_record(s, variant, f"not applicable: {e}"))
    return todo, errors


def run_eval(
    model: VLM,
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    judges: Sequence[Judge] = (),
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """Evaluate `model` on `samples` under `spec.variants`; resumable; returns the metrics."""
    out = Path(out)
    with run_lock(out):
        log = out / RECORDS
        done = {(r["sample_id"], r["variant"]) for r in read_records(log, repair=True)}
        todo, errors = plan(samples, spec.variants, spec.seed, spec.template, done)
        write_atomic(out / "config.json", json.dumps({**spec.__dict__, "n_samples": len(samples)}, indent=2))
        with log.open("a") as f:
            _append(f, errors)
            _generate_all(model, todo, spec, judges, f, progress, on_batch)
        records = read_records(log)
        metrics = compute_metrics(
            records, model=spec.model, data=spec.data, n_samples=len(samples), seed=spec.seed
        )
        metrics["families"] = family_accuracy(records)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        write_atomic(out / "summary.md", summary_markdown(metrics))
    return metrics


def _append(f, records: list[dict]) -> None:
    for r in records:
        f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _generate_all(model, todo, spec, judges, f, progress, on_batch) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress or not todo, transient=False) as bar:
        task = bar.add_task(f"eval {spec.model}", total=len(todo))
        for start in range(0, len(todo), spec.batch_size):
            chunk = todo[start : start + spec.batch_size]
            samples, prompts = [c[0] for c in chunk], [c[1] for c in chunk]
            t0 = time.perf_counter()
            gens = model.generate(prompts, max_new_tokens=spec.max_new_tokens)
            verdicts = judge_batch(judges, prompts, gens, [s.question for s in samples])
            _append(f, [make_record(s, p, g, v) for s, p, g, v in zip(samples, prompts, gens, verdicts)])
            bar.advance(task, len(chunk))
            if on_batch:
                on_batch(len(chunk), time.perf_counter() - t0)


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
