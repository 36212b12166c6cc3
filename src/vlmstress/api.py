"""The Python API: `evaluate` is `vlmstress eval` called from code, on SPECs or on objects;
`train_grpo` is `vlmstress train grpo` (`report`, `vlmstress report`, lives with the report package,
in report/build.py).

`prepare_eval` checks everything a caller can get wrong and loads the data; `PreparedEval.run`
then loads the backends and runs the runner's one engine: over an in-memory log when there is no
`out` (no file is written), or over the crash-safe, resumable log in `out`, as the command line
does (cli.cmd_eval is a caller of these two functions). A run's identity in its RunSpec comes from
what it runs: a SPEC as given (secrets redacted), or an object's own `name`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmstress.data.schema import Record, Sample
from vlmstress.errors import UsageError
from vlmstress.extract import Extractor
from vlmstress.judge.base import Judge
from vlmstress.models.base import VLM
from vlmstress.runlog import run_lock
from vlmstress.runner import RunSpec, check_same_run, run_eval, run_in_memory, run_records

if TYPE_CHECKING:
    from vlmstress.train.config import GRPORunConfig


@dataclass(frozen=True)
class EvalResult:
    """`records`: one Record per (sample, variant), as records.jsonl holds them (a Record reads as
    its JSON dict too: `record["answer"]`, `pd.DataFrame(records)`); `metrics`: the metrics.json
    object; `path`: the run directory, None for a run held in memory."""

    records: list[Record]
    metrics: dict
    path: Path | None


@dataclass(frozen=True)
class PreparedEval:
    """A checked evaluation: its RunSpec and samples, and the model, judges and answer extractor it
    will run (SPECs are loaded only by `run`, after a resumed run's identity has been checked)."""

    spec: RunSpec
    samples: list[Sample]
    model: str | VLM
    judges: list[str | Judge]
    # As given, for the backend: unlike spec.model_options these may hold a key.
    model_options: dict[str, Any] = field(default_factory=dict, repr=False)
    extract: str | Extractor | None = None

    def backends(self, out: Path | None) -> tuple[VLM, list[Judge], Extractor | None]:
        """The model, judges and extractor, SPECs loaded (judges and extractor first, as their
        failed load is cheaper). An API extractor caches under the run, as API judges do."""
        from vlmstress.models.registry import load_extractor, load_judge, load_model

        judges = [load_judge(j, **api_options(j, out)) if isinstance(j, str) else j for j in self.judges]
        extract = self.extract
        extractor = (
            load_extractor(extract, **api_options(extract, out)) if isinstance(extract, str) else extract
        )
        if isinstance(self.model, str):
            model = load_model(self.model, **api_options(self.model, out), **self.model_options)
        else:
            model = self.model
        return model, judges, extractor

    def run(
        self,
        out: str | Path | None,
        *,
        progress: bool = False,
        retry_failed: bool = False,
        log: Callable[[str], None] | None = None,
        with_records: bool = True,
    ) -> EvalResult:
        """`with_records=False` (the command line, which reads only the metrics) leaves
        `EvalResult.records` empty for a run in `out`: they stay in records.jsonl, not in memory."""
        if out is None:
            model, judges, extractor = self.backends(None)
            records, metrics = run_in_memory(
                model, self.samples, self.spec, judges=judges, progress=progress, extractor=extractor
            )
            return EvalResult(records, metrics, None)
        out = Path(out)
        # The lock and a resume's identity check come before the model loads: a second process on
        # this `out`, or a rerun of another config, is refused at once, not after minutes of loading.
        with run_lock(out):
            check_same_run(out, self.spec)
            model, judges, extractor = self.backends(out)
            metrics = run_eval(
                model,
                self.samples,
                self.spec,
                out,
                judges=judges,
                progress=progress,
                locked=True,
                retry_failed=retry_failed,
                log=log,
                extractor=extractor,
            )
        records = run_records(self.samples, self.spec, out) if with_records else []
        return EvalResult(records, metrics, out)


def api_options(spec: str, out: Path | None) -> dict[str, Any]:
    """API backends cache every request under the run, so a rerun (or resume) sends nothing twice;
    a run in memory caches nothing, since it writes nothing."""
    return {"cache_dir": str(out / "cache")} if spec.startswith("openai:") and out is not None else {}


def prepare_eval(
    model: str | VLM,
    data: str | Sequence[Sample],
    *,
    variants: str | Sequence[str] = "all",
    judges: Sequence[str | Judge] = ("rule",),
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    template: str = "vlmstress",
    model_options: dict[str, Any] | None = None,
    data_dir: str | None = None,
    system: str | None = None,
    extract: str | Extractor | None = None,
) -> PreparedEval:
    """Check the arguments (a UsageError, which is a ValueError, for a bad value; a TypeError for an
    object of the wrong kind) and load the data; nothing is written, no model loaded."""
    from vlmstress.data.loading import load_data
    from vlmstress.models.registry import check_judge_spec, parse_spec, redact_options, redact_spec
    from vlmstress.models.system_prompts import resolve_system
    from vlmstress.perturb import TEMPLATES, resolve_variants
    from vlmstress.plugins import load_entry_points

    load_entry_points()  # installed plugins may register what the arguments name
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("limit", limit)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise UsageError(f"{name} must be a positive whole number, got {value!r}")
    if isinstance(model, str):
        parse_spec(model)
        model_name = redact_spec(model)
    elif isinstance(model, VLM) and isinstance(model.name, str):
        model_name = model.name
        if model_options:
            raise UsageError("model_options apply to a model SPEC; this model object is already built")
    else:
        kind = type(model).__name__
        raise TypeError(f"model must be a SPEC or a VLM (with .name and .generate), got a {kind}")
    options = _check_options(model_options or {})
    if system is not None and not isinstance(system, str):
        raise UsageError(f"system must be a str (or None for the model's documented one), got {system!r}")
    if isinstance(judges, str):  # one SPEC, not a sequence of one-letter SPECs
        judges = [judges]
    judge_names = []
    for judge in judges:
        if isinstance(judge, str):
            check_judge_spec(judge)
            judge_names.append(redact_spec(judge))
        elif callable(getattr(judge, "judge", None)) and isinstance(getattr(judge, "name", None), str):
            judge_names.append(judge.name)
        else:
            raise TypeError(f"a judge must be a SPEC or a Judge (with .name and .judge), got {judge!r}")
    extract_name = _extractor_name(extract)
    if isinstance(variants, str):
        variant_names = resolve_variants(variants)
    elif all(isinstance(v, str) for v in variants):
        variant_names = resolve_variants(",".join(variants))
    else:
        raise TypeError(f"variants must be 'all', a comma list or a list of names, got {variants!r}")
    TEMPLATES.lookup(template)
    if isinstance(data, str):
        samples, data_name = load_data(data, data_dir=data_dir, limit=limit, seed=seed)
    else:
        samples = list(data)[:limit] if limit is not None else list(data)
        data_name = samples_name(samples)
    spec = RunSpec(
        model=model_name,
        data=data_name,
        variants=variant_names,
        judges=judge_names,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        template=template,
        data_dir=data_dir,
        model_options=redact_options(options),
        system=resolve_system(model, system),
        extract=extract_name,
    )
    return PreparedEval(spec, samples, model, list(judges), options, extract)


def _extractor_name(extract: Any) -> str | None:
    """The extractor's name in the run's identity: its SPEC as given (secrets redacted), or an
    object's own `name`; None without one."""
    from vlmstress.models.registry import check_extract_spec, redact_spec

    if extract is None:
        return None
    if isinstance(extract, str):
        check_extract_spec(extract)
        return redact_spec(extract)
    if callable(getattr(extract, "extract", None)) and isinstance(getattr(extract, "name", None), str):
        return extract.name
    raise TypeError(
        f"extract must be a model SPEC or an Extractor (with .name and .extract), got {extract!r}"
    )


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    # The options are written to config.json and compared on a resume, so they must be JSON values
    # that read back as themselves.
    try:
        same = json.loads(json.dumps(options)) == options
    except (TypeError, ValueError):
        same = False
    if not isinstance(options, dict) or not same:
        raise UsageError(f"model_options must be a dict of JSON values (str keys), got {options!r}")
    return dict(options)


def samples_name(samples: Sequence[Sample]) -> str:
    """The data name of a list of Samples: `samples:N:DIGEST`, the digest of what the records of a
    run depend on (ids, questions, options, answers), so a resume on other samples is refused.
    Images are left out: they may be large bytes or PIL images, and ids name them in practice."""
    if not samples:
        raise UsageError("data holds no samples")
    if not all(isinstance(s, Sample) for s in samples):
        raise TypeError("data must be a Data SPEC or a list of vlmstress Sample objects")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise UsageError("data holds samples with the same sample_id; records are keyed by it")
    digest = hashlib.sha256()
    for s in samples:
        row = [s.sample_id, s.question, list(s.options), s.target, s.answer_text]
        digest.update(json.dumps(row).encode() + b"\n")
    return f"samples:{len(samples)}:{digest.hexdigest()[:12]}"


def evaluate(
    model: str | VLM,
    data: str | Sequence[Sample],
    *,
    variants: str | Sequence[str] = "all",
    judges: Sequence[str | Judge] = ("rule",),
    out: str | Path | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    template: str = "vlmstress",
    model_options: dict[str, Any] | None = None,
    progress: bool = False,
    data_dir: str | None = None,
    retry_failed: bool = False,
    system: str | None = None,
    extract: str | Extractor | None = None,
) -> EvalResult:
    """Evaluate `model` on `data` under `variants`, as `vlmstress eval` does.

    model: a model SPEC (`tiny`, `hf:ID`, `openai:MODEL@URL`, ...) or a VLM object. data: a Data
    SPEC (`synth:6`, a benchmark, a file) or a list of Samples. judges: `rule`, model SPECs or Judge
    objects; none gives records without verdicts. model_options go to a SPEC's backend (as
    `--model-opt`). system: the system turn of every prompt; None takes the model's documented one
    (models/system_prompts.py), "" none. extract: a model SPEC (or Extractor object) that reads the
    answer of a completion the rules cannot parse (extract.py); None, no extraction. With `out`, the
    run is logged there and resumable (a rerun with the same `out` does only what is missing);
    without, it is held in memory and writes no file.
    """
    prepared = prepare_eval(
        model,
        data,
        variants=variants,
        judges=judges,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        template=template,
        model_options=model_options,
        data_dir=data_dir,
        system=system,
        extract=extract,
    )
    return prepared.run(out, progress=progress, retry_failed=retry_failed)


def train_grpo(
    config: str | Path | Mapping[str, Any] | GRPORunConfig,
    *,
    seed: int | None = None,
    out: str | Path | None = None,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> Path:
    """`vlmstress train grpo` from Python: one GRPO run; returns the final policy's folder (evaluate
    it with `evaluate("tiny:" + str(path), ...)` or `hf:` for a hub model).

    config: a GRPORunConfig, a YAML file as the command line takes, or a dict of its fields;
    `overrides` replace top-level fields (`max_steps=2`, `learning_rate=5e-5`) and are validated
    with them. Resumes from the newest complete checkpoint in `out` (default: the config's `out`).
    Bad fields raise `vlmstress.errors.UsageError` before anything is created."""
    from vlmstress.plugins import load_entry_points
    from vlmstress.train.config import GRPORunConfig, load_config, validated
    from vlmstress.train.grpo import train_grpo as run

    load_entry_points()  # before the config is validated: it may name what plugins register
    if isinstance(config, GRPORunConfig):
        cfg = validated(GRPORunConfig, {**config.model_dump(), **overrides}) if overrides else config
    elif isinstance(config, Mapping):
        cfg = validated(GRPORunConfig, {**config, **overrides})
    elif isinstance(config, str | Path):
        cfg = load_config(config, GRPORunConfig, **overrides)
    else:
        raise TypeError(f"config must be a GRPORunConfig, a YAML path or a dict, got {config!r}")
    return run(cfg, seed=seed, out=out, log=log)
