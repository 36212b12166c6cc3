"""Run directories as the report reads them: config.json, metrics.json, records.jsonl, dynamics.jsonl.

Everything the report shows comes from these files: numbers from metrics.json (so the report can
never disagree with `eval`), per-sample views and paired tests from records.jsonl, training curves
from dynamics.jsonl. A directory with neither metrics.json nor dynamics.jsonl (its own, or for a
GRPO seed sweep those of its seed-*/ runs) is not a run. A directory without metrics.json is a
training run: it feeds the training-dynamics figures only, never the tables or the run count.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.report.palette import order_variants
from vlmstress.runlog import RECORDS, read_records

DYNAMICS = "dynamics.jsonl"
# A lone UTF-16 surrogate (a model that emitted half an emoji, kept by json's \ud83d escape; a file
# name that is not UTF-8) is a valid Python str but cannot be written as UTF-8 nor drawn by
# matplotlib; it is shown as U+FFFD instead.
_SURROGATE = re.compile("[\ud800-\udfff]")
UNKNOWN = "–"  # a model or data a run folder does not record (a training run's, say)
# A study's evaluation folders (study.py): DIR/eval/sft, DIR/eval/ARM-seed-S, beside DIR/study.json.
STUDY_FILE = "study.json"
_ARM_SEED = re.compile(r"(?P<arm>.+)-seed-(?P<seed>-?\d+)")


def writable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True)
class Run:
    """One run directory, loaded. `label` is the short name tables and legends use."""

    index: int
    path: Path
    label: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    records: list[dict[str, Any]] = field(repr=False)
    dynamics: list[dict[str, Any]] = field(repr=False)

    @property
    def evaluated(self) -> bool:
        """An evaluation run (metrics.json), not a training run's dynamics only."""
        return self.metrics is not None

    @property
    def model(self) -> str:
        return str((self.metrics or {}).get("model") or self.config.get("model") or UNKNOWN)

    @property
    def data(self) -> str:
        return str((self.metrics or {}).get("data") or self.config.get("data") or UNKNOWN)

    @property
    def variants(self) -> list[str]:
        return order_variants((self.metrics or {}).get("variants", {}))

    def variant_metrics(self, variant: str) -> dict[str, Any] | None:
        return (self.metrics or {}).get("variants", {}).get(variant)


def load_runs(dirs: list[Path]) -> list[Run]:
    """Each directory once (in the order given), with labels that tell the runs apart."""
    unique = list(dict.fromkeys(Path(d).resolve() for d in dirs))
    if not unique:
        raise UsageError("report: give at least one run directory")
    loaded = [_load(d) for d in unique]
    labels = [writable(label) for label in run_labels([(c, m, d) for d, c, m, _, _ in loaded])]
    return [
        Run(i, d, labels[i], config, metrics, records, dynamics)
        for i, (d, config, metrics, records, dynamics) in enumerate(loaded)
    ]


def _load(path: Path) -> tuple[Path, dict, dict | None, list[dict], list[dict]]:
    if not path.is_dir():
        raise UsageError(f"report: {path} is not a directory")
    config = _read_json(path / "config.json") or {}
    metrics = _read_json(path / "metrics.json")
    dynamics = _read_jsonl(path / DYNAMICS)
    if metrics is None and not dynamics:
        # A GRPO seed sweep writes one run per seed to DIR/seed-S; the rows carry their seed, so
        # together they give the mean and spread over seeds.
        dynamics = [row for f in sorted(path.glob(f"seed-*/{DYNAMICS}")) for row in _read_jsonl(f)]
    if metrics is None and not dynamics:
        raise UsageError(f"report: {path} is not a run directory (no metrics.json or {DYNAMICS})")
    try:
        records = read_records(path / RECORDS)
    except ValueError as e:
        raise UsageError(f"report: {path / RECORDS} is not valid JSON Lines: {e}") from None
    return path, config, metrics, records, dynamics


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"report: {path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"report: {path} must hold a JSON object")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            # A training job appends while it runs; only a torn last line is forgivable.
            if number == len(lines):
                break
            raise UsageError(f"report: {path}:{number} is not valid JSON") from None
    return rows


def short_model(spec: str) -> str:
    """A model SPEC without what makes it long: the directories of a local path, the server URL.

    `replay:/tmp/x/run-a.jsonl` -> `replay:run-a`, `openai:gpt-4o@http://host/v1` -> `openai:gpt-4o`.
    Hub ids (`hf:Qwen/Qwen2.5-VL-7B-Instruct`) are kept whole: the organisation is part of the name.
    A training run's output keeps its run folder: `tiny:runs/demo/plain-seed-0/final` ->
    `tiny:plain-seed-0/final` (every run's policy is called `final`).
    """
    kind, sep, rest = spec.partition(":")
    if not sep:
        return spec
    rest = rest.split("@")[0] if kind == "openai" else rest
    if rest.startswith(("/", ".", "~")) or rest.count("/") > 1:
        path = Path(rest)
        rest = path.stem if path.suffix else path.name
        if rest == "final" or rest.startswith("checkpoint-"):
            rest = f"{path.parent.name}/{rest}"
    return f"{kind}:{rest}"


def _dir_label(path: Path) -> str:
    # One seed of a sweep is named by its sweep too: "grpo-faithful/seed-1", not "seed-1".
    return f"{path.parent.name}/{path.name}" if path.name.startswith("seed-") else path.name


def policy_name(spec: str) -> str | None:
    """The training run whose policy a model SPEC loads, named as the study names its arms:
    `tiny:runs/demo/train/plain/seed-0/final` -> "plain, seed 0", `hf:runs/grpo/final` -> "grpo";
    a checkpoint adds its step ("plain, seed 0, step 40"). None for a SPEC that is no training output
    (a hub id, `tiny`, a server)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("tiny", "hf", "vllm") or not rest:
        return None
    path = Path(rest)
    step = re.fullmatch(r"checkpoint-(\d+)", path.name)
    if path.name != "final" and step is None:
        return None
    run = path.parent
    seed = re.fullmatch(r"seed-(-?\d+)", run.name)
    name = f"{run.parent.name}, seed {seed[1]}" if seed and run.parent.name else run.name
    if not name:
        return None
    return f"{name}, step {step[1]}" if step else name


def study_label(path: Path) -> str | None:
    """A study's evaluation folder is named by what it evaluated (study.py): `DIR/eval/plain-seed-0`
    -> "plain, seed 0", `DIR/eval/sft` -> "sft". None outside a study."""
    if path.parent.name != "eval" or not (path.parent.parent / STUDY_FILE).is_file():
        return None
    arm_seed = _ARM_SEED.fullmatch(path.name)
    return f"{arm_seed['arm']}, seed {arm_seed['seed']}" if arm_seed else path.name


def _name(config: dict, metrics: dict | None, path: Path) -> str:
    spec = (metrics or {}).get("model") or config.get("model")
    if metrics is None or not spec:  # a training run: named by its folder, as its arm is
        return _dir_label(path)
    return study_label(path) or policy_name(str(spec)) or short_model(str(spec))


def run_labels(runs: list[tuple[dict, dict | None, Path]]) -> list[str]:
    """Labels for (config, metrics, dir) triples: the study's name of the run, the training run a
    policy comes from, or the short model name; plus the data when the evaluation runs differ in data
    (a training run records none), plus the directory name when that still leaves two runs alike."""
    names = [_name(c, m, d) for c, m, d in runs]
    datas = [str((m or {}).get("data") or c.get("data") or "") for c, m, d in runs]
    labels = names
    if len({x for x in datas if x}) > 1:
        labels = [f"{n} · {x}" if x else n for n, x in zip(names, datas, strict=True)]
    counts = Counter(labels)
    dirs = [d for _, _, d in runs]
    return [
        f"{label} ({d.name})" if counts[label] > 1 else label for label, d in zip(labels, dirs, strict=True)
    ]
