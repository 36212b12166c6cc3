"""The study of the paper's "RL fine-tuning dynamics" (docs/paper.md) as one command (`vlmstress demo`).

From an SFT model (by default the shipped tiny model, which is the SFT warm start), GRPO arms are
trained over several seeds; the SFT model and every arm's final policy are evaluated under the
perturbation suite on the synthetic test split (rule judge), and one table compares the arms:

  plain             GRPO with the config's rewards, no augmentation
  augment           + adversarial prompt augmentation (the config's rates; ARM_AUGMENT if it has none)
  faithful          + the faithfulness-aware reward: every reward term x 1[judge says consistent]
  augment+faithful  both

Each arm is a small set of overrides of one GRPORunConfig (configs/grpo-tiny.yaml by default), so
the arms differ in nothing else. The study sizes the runs (steps, dynamics evaluations) so that the
default finishes on a laptop CPU in minutes.

Layout of the output folder DIR:
  study.json                settings that define the trained and evaluated runs (a rerun must match)
  train/ARM/seed-S/         one GRPO run: checkpoints, final/ (the policy), dynamics.jsonl
  eval/sft/, eval/ARM-seed-S/   one evaluation run each (records.jsonl, metrics.json, summary.md)
  sampled/sft/, sampled/ARM-seed-S/   the same models on base with answers sampled at temperature 1
                            (as GRPO samples them): where consistency is measured too (findings 2s, 6s)
  study.md                  the comparison table (also printed), then the Findings section: each of the
                            paper's claims tested on these runs, with its p-value and verdict
  findings.json             the same findings, one object each (src/vlmstress/findings.py)
  report.html (.md, .tex)   the HTML report over every evaluation, with each arm's training curves

Shipped arms: GRPO on a CPU takes hours (the paper's effects need ~120 steps; docs/tiny-model.md),
so the arms of the default study ship with the package like the SFT weights do, in
`assets/study/ARM/seed-S/` (the final policy with its weights in float16, the run's dynamics.jsonl,
and trained.json naming the SFT weights' digest and the whole arm config they were trained with).
A study uses a shipped arm only where it would train exactly that run itself (same SFT weights,
same config, same seed), and says so; `--retrain` trains every arm instead, by the same recipe, and
`python scripts/ship_arms.py DIR` turns such a study's arms into the shipped ones. Any other
setting (`--grpo-steps`, `--config`, `--model`, a seed with no shipped arm) trains in the study.

Resume: a rerun with the same DIR skips the GRPO runs that finished (`trained.json` beside their
final policy), continues an interrupted one from its last checkpoint (train_grpo does that), and
the evaluation runner resumes its records.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmstress.errors import UsageError
from vlmstress.report.summary import USER_MODE_MARK

if TYPE_CHECKING:
    from vlmstress.findings import Finding
    from vlmstress.train.config import GRPORunConfig

# The study's default size. The arms are the config's own 120 GRPO steps (the paper's effects need them:
# docs/tiny-model.md), which take hours on a CPU, so the default study evaluates the shipped arms
# (SHIPPED_ARMS) trained with exactly these settings by `vlmstress demo --retrain`; what remains is
# nine evaluations of 300 test samples under every variant and the report, within 15 minutes on 2 CPU
# cores. A study with other settings trains its arms itself.
DEFAULT_GRPO_STEPS = 120
DEFAULT_N = 300
DEFAULT_SEEDS = (0, 1)
# Held-out samples per dynamics evaluation, and how many evaluations a run gets after step 0: enough
# points for a trend test over steps (Kendall's tau over 7 steps x 2 seeds), each mean over enough
# samples to move less than the trend it tests.
DEFAULT_DYNAMICS_N = 100
DYNAMICS_POINTS = 6
EVAL_BATCH = 64  # the tiny model's evaluation is ~1.6x faster at 64 prompts a batch than at 16
# Shipped inside the package, so an installed (not editable) vlmstress finds it too; a source
# checkout's configs/grpo-tiny.yaml is a link to this file.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "assets" / "configs" / "grpo-tiny.yaml"
DONE = "trained.json"
# GRPO arms trained by `vlmstress demo --retrain` and shipped like the SFT weights (module docstring)
SHIPPED_ARMS = Path(__file__).resolve().parent / "assets" / "study"
WEIGHTS = "model.safetensors"
FINDINGS = "findings.json"  # the Findings section's rows, as study.md and report.html show them
# Every model is evaluated on base a second time with its answers sampled, as GRPO samples them
# (models/hf.py temperature), into DIR/sampled/: consistency is measured there too (findings 2s, 6s).
SAMPLED = "sampled"
SAMPLING = {"temperature": 1.0}


@dataclass(frozen=True)
class Arm:
    """One GRPO arm: which of the two interventions it switches on."""

    name: str
    augment: bool  # adversarial prompt augmentation at the config's rates (off: every prompt base)
    faithful: bool  # every reward term gated by the judge: R x 1[judge says consistent]


ARMS = (
    Arm("plain", augment=False, faithful=False),
    Arm("augment", augment=True, faithful=False),
    Arm("faithful", augment=False, faithful=True),
    Arm("augment+faithful", augment=True, faithful=True),
)


# The augment arms' rates where the config trains without augmentation: the paper's four kinds, with
# the misleading ones raised from its 10%. The paper trains 1k+ steps, the tiny arms 120; at 10% each
# the augmented tiny arms' wrong_caption accuracy moved -0.8 points against their unaugmented twins
# (n.s.), at these rates +2.7 (p = 3.4e-06 over both seeds; docs/tiny-model.md, "GRPO from the
# shipped weights").
ARM_AUGMENT = {"correct_think": 0.1, "wrong_think": 0.3, "correct_caption": 0.1, "wrong_caption": 0.2}


def arm_config(base: GRPORunConfig, arm: Arm) -> GRPORunConfig:
    """`base` with the arm's augmentation and reward gating; everything else as in `base`."""
    from vlmstress.train.augment import default_rates

    if not arm.augment:
        rates = dict.fromkeys(base.augment, 0.0)
    elif any(base.augment.values()):
        rates = base.augment
    else:  # a config that trains without augmentation: the arm takes the study's rates
        rates = {**dict.fromkeys(default_rates(), 0.0), **ARM_AUGMENT}
    rewards = [term.model_copy(update={"faithful": arm.faithful}) for term in base.rewards]
    return base.model_copy(update={"augment": rates, "rewards": rewards})


@dataclass(frozen=True)
class StudySettings:
    out: Path
    model: str = "tiny"  # the SFT model: evaluated as the baseline, and every arm's GRPO init
    config: Path = DEFAULT_CONFIG  # the GRPORunConfig the arms override
    seeds: tuple[int, ...] = DEFAULT_SEEDS  # GRPO training seeds, one run per arm and seed
    grpo_steps: int = DEFAULT_GRPO_STEPS
    n: int = DEFAULT_N  # synth test samples each model is evaluated on
    seed: int = 0  # data seed: the test set and its misleading letters, the training pool, held-out set
    variants: tuple[str, ...] = ()  # () = every variant
    dynamics_n: int = DEFAULT_DYNAMICS_N
    train: bool = True  # False: evaluate the SFT model and the arms already in `out` or shipped only
    arms: tuple[Arm, ...] = ARMS
    retrain: bool = False  # True: train every arm here, even where a shipped checkpoint matches
    shipped: Path = SHIPPED_ARMS  # where shipped arm checkpoints are looked up


@dataclass(frozen=True)
class Evaluation:
    label: str  # "sft" or an arm's name
    seed: int | None  # the arm's GRPO seed; None for the SFT model
    path: Path  # the evaluation run folder
    metrics: dict  # its metrics.json
    origin: str | None = None  # an arm's: "shipped" (installed from the package) or "trained" (here)


@dataclass(frozen=True)
class StudyResult:
    table: str  # study.md's text
    study_md: Path
    report: Path
    evaluations: list[Evaluation]


def base_config(settings: StudySettings) -> GRPORunConfig:
    """The config every arm overrides: the file's, started from the study's model, on the study's
    data seed, sized to the study's steps (dynamics: DYNAMICS_POINTS evaluations after step 0; a
    synthetic training pool of the prompts the steps use)."""
    from vlmstress.train.config import GRPORunConfig, load_config

    if not Path(settings.config).is_file():
        raise UsageError(f"GRPO config not found: {settings.config} (pass --config FILE.yaml)")
    cfg = load_config(settings.config, GRPORunConfig)
    assert isinstance(cfg, GRPORunConfig)
    dynamics = cfg.dynamics.model_copy(
        update={
            "n": min(cfg.dynamics.n, settings.dynamics_n),
            "eval_every": max(1, math.ceil(settings.grpo_steps / DYNAMICS_POINTS)),
        }
    )
    data = cfg.data
    if [d.source for d in data] == ["synth"]:
        # A pool of what the steps consume (TRL draws prompts without replacement), not the config's
        # thousands: drawing and PNG-encoding 4,000 synthetic samples costs ~10 s of every run.
        used = math.ceil(
            settings.grpo_steps
            * cfg.per_device_train_batch_size
            * cfg.gradient_accumulation_steps
            / cfg.num_generations
        )
        data = [data[0].model_copy(update={"n": min(data[0].n or used, used)})]
    return cfg.model_copy(
        update={
            "init": settings.model,
            "data_seed": settings.seed,
            "max_steps": settings.grpo_steps,
            "data": data,
            "dynamics": dynamics,
            "seeds": None,
            "out": "",
        }
    )


def model_kind(model: str) -> str:
    """`tiny` or `hf`: the SPECs GRPO can start from (train/grpo.py load_policy)."""
    from vlmstress.models.registry import parse_spec

    kind = parse_spec(model)[0]
    if kind not in ("tiny", "hf"):
        raise UsageError(f"demo --model must be tiny, tiny:DIR or hf:ID_OR_PATH, got {model!r}")
    return kind


def weights_digest(model: str) -> str | None:
    """SHA-256 of a tiny checkpoint's weights (the shipped ones for `tiny`), so that a study folder is
    not resumed on top of runs that started from other weights; None for `hf:` models, whose
    multi-GB weights are not worth reading for this."""
    import hashlib

    from vlmstress.models.registry import parse_spec
    from vlmstress.models.tiny import ASSET_DIR

    kind, target = parse_spec(model)
    if kind != "tiny":
        return None
    digest = hashlib.sha256()
    for f in sorted((Path(target).expanduser() if target else ASSET_DIR).glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def check_study(out: Path, identity: dict) -> None:
    """Refuse a rerun whose settings would mix runs of another study into this folder's table."""
    path = out / "study.json"
    if path.exists():
        before, now = _flat(json.loads(path.read_text())), _flat(identity)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise UsageError(
                f"{out} holds a study with a different {', '.join(changed)}; use another --out "
                "(or delete the folder to start over)"
            )
        return
    from vlmstress.runlog import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(identity, indent=2))


def _flat(settings: Mapping[str, Any]) -> dict[str, Any]:
    # One level deep, so that a refusal names the config field ("config.learning_rate") that moved.
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def run_study(settings: StudySettings, log: Callable[[str], None] = print) -> StudyResult:
    """Train (unless `settings.train` is False) and evaluate every arm; write study.md and the report."""
    from vlmstress.perturb import resolve_variants
    from vlmstress.runlog import run_lock

    out = Path(settings.out)
    kind = model_kind(settings.model)
    variants = resolve_variants(",".join(settings.variants) if settings.variants else "all")
    base = base_config(settings)
    identity = {
        "model": settings.model,
        "model_weights": weights_digest(settings.model),
        "n": settings.n,
        "seed": settings.seed,
        "config": base.model_dump(mode="json"),
        # a folder of shipped arms is not retrained in place (its evaluations would be reused)
        "retrain": settings.retrain,
    }
    with run_lock(out):  # two studies in one folder would train the same runs at once
        check_study(out, identity)
        return _run(settings, base, kind, variants, out, log)


def _run(
    settings: StudySettings, base: GRPORunConfig, kind: str, variants: list[str], out: Path, log
) -> StudyResult:
    import torch

    from vlmstress.data import synth
    from vlmstress.findings import findings_json
    from vlmstress.report import build_report
    from vlmstress.runlog import write_atomic
    from vlmstress.runner import done_keys, resumed_line

    if base.torch_threads:  # evaluation runs in this process too, before any trainer sets it
        torch.set_num_threads(base.torch_threads)
    samples = synth.generate(settings.n, seed=settings.seed, split="test")
    start = time.monotonic()

    def stage(text: str) -> None:  # elapsed time first: where a study's minutes go, at a glance
        minutes, seconds = divmod(int(time.monotonic() - start), 60)
        log(f"== [{minutes}:{seconds:02d}] {text}")

    def evaluate(label: str, seed: int | None, model: str, origin: str | None = None) -> Evaluation:
        path = out / "eval" / (label if seed is None else f"{label}-seed-{seed}")
        done = done_keys(path) & {(s.sample_id, v) for s in samples for v in variants}
        wanted = len(samples) * len(variants)
        if len(done) == wanted:  # a rerun: say it is not evaluated again
            stage(f"reusing {path}: all {wanted} records of {model} already done")
        else:
            resumed = f" ({resumed_line(samples, variants, done)})" if done else ""
            stage(f"evaluating {model} on synth:{settings.n} ({len(variants)} variants) -> {path}{resumed}")
        metrics = _evaluate(model, samples, variants, settings, path)
        evaluation = Evaluation(label, seed, path, metrics, origin)
        if "base" in variants:
            sampled.append(evaluate_sampled(evaluation, model))
        return evaluation

    def evaluate_sampled(greedy: Evaluation, model: str) -> Evaluation:
        # base again, answers sampled as the GRPO policy samples them: whether answers follow their
        # reasoning is decided there (greedy answers of a sure model always do; findings 2s, 6s)
        path = out / SAMPLED / greedy.path.name
        if len(done_keys(path) & {(s.sample_id, "base") for s in samples}) == len(samples):
            stage(f"reusing {path}: all {len(samples)} sampled base records of {model} already done")
        else:
            stage(f"sampling {model} on base at temperature {SAMPLING['temperature']:g} -> {path}")
        metrics = _evaluate(model, samples, ["base"], settings, path, SAMPLING)
        return Evaluation(greedy.label, greedy.seed, path, metrics, greedy.origin)

    sampled: list[Evaluation] = []

    evaluations = [evaluate("sft", None, settings.model)]
    digest = weights_digest(settings.model)
    for seed in settings.seeds:  # seed-major: one seed of every arm is a whole comparison early on
        for arm in settings.arms:
            run = out / "train" / arm.name / f"seed-{seed}"
            cfg = arm_config(base, arm)
            shipped = None if settings.retrain else shipped_arm(settings.shipped, arm.name, cfg, seed, digest)
            if (run / DONE).exists():
                how = "the shipped checkpoint" if origin(run) == "shipped" else "trained"
                stage(f"reusing GRPO arm {arm.name}, seed {seed}: {how} in {run}")
            elif shipped is not None:
                stage(
                    f"GRPO arm {arm.name}, seed {seed}: the shipped checkpoint ({settings.grpo_steps} "
                    f"steps, trained by `vlmstress demo --retrain`, not here) -> {run}"
                )
                install_arm(shipped, run)
            elif not settings.train:
                continue
            else:
                if not settings.retrain and (settings.shipped / arm.name / f"seed-{seed}" / DONE).exists():
                    stage(
                        f"the shipped {arm.name} arm, seed {seed}, was trained from other SFT weights or "
                        "settings than this study's: training it here (10-15 minutes per arm and seed "
                        "on one CPU core at 120 steps)"
                    )
                stage(f"GRPO arm {arm.name}, seed {seed}: {settings.grpo_steps} steps -> {run}")
                _train(cfg, seed, run, digest, log)
            evaluations.append(evaluate(arm.name, seed, f"{kind}:{run / 'final'}", origin(run)))

    stage("writing study.md and the HTML report")
    found = study_findings(evaluations, out, sampled)
    table = study_markdown(evaluations, variants, settings, found, sampled)
    write_atomic(out / "study.md", table)
    summary = findings_json(found)
    if sampled:  # the evaluations findings 2s and 6s read, as a table beside the Findings
        summary["sampled"] = {"lead": SAMPLED_LEAD, "rows": sampled_rows(sampled)}
    write_atomic(out / FINDINGS, json.dumps(summary, indent=2))
    # An arm's folder holds its seeds' dynamics.jsonl: the report plots their mean and spread.
    arms = dict.fromkeys(e.label for e in evaluations if e.seed is not None)
    report = build_report(
        [e.path for e in evaluations] + [out / "train" / a for a in arms],
        html=out / "report.html",
        findings=summary,
        log=log,  # nine runs' figures take minutes: say which part it is drawing
    )
    return StudyResult(table=table, study_md=out / "study.md", report=report, evaluations=evaluations)


def study_findings(
    evaluations: Sequence[Evaluation], out: Path, sampled: Sequence[Evaluation] = ()
) -> list[Finding]:
    """The paper's findings on the study's evaluation records and its arms' dynamics rows (the seeds
    evaluated here, from train/ARM/seed-S/dynamics.jsonl); `sampled`: the same models' sampled
    evaluations on base (sampled/), for findings 2s and 6s."""
    from vlmstress.findings import EvalRun, compute_findings
    from vlmstress.runlog import RECORDS, read_records

    runs = [EvalRun(e.label, e.seed, read_records(e.path / RECORDS)) for e in evaluations]
    sampled_runs = [EvalRun(e.label, e.seed, read_records(e.path / RECORDS)) for e in sampled]
    dynamics: dict[str, list[dict]] = {}
    for e in evaluations:
        if e.seed is not None:
            path = out / "train" / e.label / f"seed-{e.seed}" / "dynamics.jsonl"
            dynamics.setdefault(e.label, []).extend(_jsonl(path))
    return compute_findings(runs, dynamics, sampled_runs)


def _jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file (none when it is absent); a torn line is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def recipe(cfg: GRPORunConfig) -> dict:
    """What defines an arm's training run besides its seed and the SFT weights: the whole config
    but where it is written."""
    return cfg.model_dump(mode="json", exclude={"out", "seed", "seeds"})


def _train(
    cfg: GRPORunConfig, seed: int, run: Path, sft_weights: str | None, log: Callable[[str], None]
) -> None:
    from vlmstress.runlog import write_atomic
    from vlmstress.train.grpo import train_grpo

    train_grpo(cfg, seed=seed, out=run, log=log)
    # Written last: its presence says the final policy is whole, so a rerun need not touch the run.
    # It names what the run was trained from, so that it can be shipped (scripts/ship_arms.py).
    made = {
        "seed": seed,
        "max_steps": cfg.max_steps,
        "source": "trained",
        "sft_weights": sft_weights,
        "config": recipe(cfg),
    }
    write_atomic(run / DONE, json.dumps(made))


def origin(run: Path) -> str:
    """Where a finished arm's policy came from: "shipped" (installed) or "trained" (in this study)."""
    try:
        source = json.loads((run / DONE).read_text()).get("source")
    except (OSError, ValueError):
        source = None
    return "shipped" if source == "shipped" else "trained"


def shipped_arm(
    shipped: Path, arm: str, cfg: GRPORunConfig, seed: int, sft_weights: str | None
) -> Path | None:
    """The shipped checkpoint of `arm` at `seed`, if it was trained exactly as this study would
    train it (the same SFT weights, by digest, and the same config); else None."""
    folder = shipped / arm / f"seed-{seed}"
    try:
        made = json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None
    # The whole config, as dumped: a field added to GRPORunConfig since the arms were trained makes
    # them look different, and tests/test_study.py then says the shipped arms need retraining.
    if sft_weights is None or made.get("sft_weights") != sft_weights or made.get("config") != recipe(cfg):
        return None
    if not (folder / "final" / WEIGHTS).is_file():
        return None
    return folder


def install_arm(shipped: Path, run: Path) -> None:
    """A shipped arm as a finished run of this study: final/ (the policy, its weights back in float32
    as they were trained), its dynamics.jsonl, and trained.json last (saying `source: shipped`)."""
    from safetensors.torch import load_file, save_file

    from vlmstress.runlog import write_atomic

    final = run / "final"
    final.mkdir(parents=True, exist_ok=True)
    for f in (shipped / "final").iterdir():
        if f.name == WEIGHTS:
            weights = {k: v.float() for k, v in load_file(f).items()}
            save_file(weights, final / WEIGHTS, metadata={"format": "pt"})
        elif f.is_file():
            shutil.copy2(f, final / f.name)
    if (shipped / "dynamics.jsonl").is_file():
        shutil.copy2(shipped / "dynamics.jsonl", run / "dynamics.jsonl")
    made = json.loads((shipped / DONE).read_text())
    write_atomic(run / DONE, json.dumps({**made, "source": "shipped"}))


def ship_arms(study: Path, dest: Path = SHIPPED_ARMS) -> list[Path]:
    """Copy a study's trained arms (train/ARM/seed-S with trained.json; arms it installed from the
    shipped ones are left as they are) into `dest` as shipped checkpoints: final/ with its weights
    in float16 (half the size; what that changes is measured in docs/tiny-model.md),
    dynamics.jsonl, trained.json. Returns the folders written."""
    from safetensors.torch import load_file, save_file

    done = sorted(Path(study).glob(f"train/*/seed-*/{DONE}"))
    if not done:
        raise UsageError(f"no trained arms under {study}/train")
    written = []
    for path in done:
        run = path.parent
        made = json.loads(path.read_text())
        if made.get("source") == "shipped":  # installed from dest: already shipped as it is
            continue
        if made.get("sft_weights") is None:
            raise UsageError(f"{run} was not trained in that study from tiny weights: not shipped")
        target = dest / run.parent.name / run.name
        if target.exists():
            shutil.rmtree(target)
        (target / "final").mkdir(parents=True)
        for f in (run / "final").iterdir():
            if f.name == WEIGHTS:
                weights = {k: v.half() for k, v in load_file(f).items()}
                save_file(weights, target / "final" / WEIGHTS, metadata={"format": "pt"})
            elif f.is_file():
                shutil.copy2(f, target / "final" / f.name)
        shutil.copy2(run / "dynamics.jsonl", target / "dynamics.jsonl")
        (target / DONE).write_text(json.dumps(made, indent=1) + "\n")
        written.append(target)
    if not written:
        raise UsageError(
            f"every arm under {study}/train was installed from the shipped ones: nothing to ship"
        )
    return written


def _evaluate(
    model: str,
    samples: Sequence,
    variants: list[str],
    settings: StudySettings,
    out: Path,
    options: Mapping[str, Any] | None = None,
) -> dict:
    from vlmstress.judge.rule import RuleJudge
    from vlmstress.models.registry import load_model
    from vlmstress.runner import RunSpec, run_eval

    spec = RunSpec(
        model=model,
        data=f"synth:{settings.n}",
        variants=variants,
        seed=settings.seed,
        batch_size=EVAL_BATCH,
        model_options=dict(options or {}),
    )
    return run_eval(load_model(model, **(options or {})), samples, spec, out, judges=[RuleJudge()])


# ---------------------------------------------------------------------------------------------------
# The comparison table

NULL = "–"
MISLED = ("wrong_think", "wrong_caption")


def spread_cell(values: Sequence[float | None], scale: float, digits: int) -> str:
    """mean ± half the range over seeds (so the cell spans every seed's value); one value alone."""
    xs = [scale * v for v in values if v is not None]
    if not xs:
        return NULL
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(xs) - min(xs)) / 2:.{digits}f}"


def _get(metrics: Mapping[str, Any], variant: str, key: str) -> float | None:
    return (metrics.get("variants", {}).get(variant) or {}).get(key)


def table_columns(variants: Sequence[str]) -> list[tuple[str, str, str, float, int]]:
    """(header, variant, metrics key, scale, decimals) of each column."""
    columns = [(f"{v} acc %", v, "accuracy", 100.0, 1) for v in variants]
    if "base" in variants:
        columns += [
            ("base cons.-adj. acc %", "base", "consistency_adjusted_accuracy", 100.0, 1),
            ("base entropy (nats)", "base", "mean_entropy", 1.0, 3),
        ]
    columns += [(f"followed {v} %", v, "followed_misleading", 100.0, 1) for v in MISLED if v in variants]
    return columns


def study_markdown(
    evaluations: Sequence[Evaluation],
    variants: Sequence[str],
    settings: StudySettings,
    findings: Sequence[Finding] = (),
    sampled: Sequence[Evaluation] = (),
) -> str:
    """study.md: a row per model (SFT, then each arm as mean ± spread over its seeds), a column per
    variant's accuracy, then base consistency-adjusted accuracy and entropy, then how often the
    wrong_think / wrong_caption answers followed the misleading letter; then base accuracy per seed;
    then the Findings section, when `findings` are given."""
    groups = by_label(evaluations)
    columns = table_columns(variants)
    header = ["model", "seeds", *(c[0] for c in columns)]
    lines = [
        f"# GRPO arms vs the SFT model {settings.model} on synth:{settings.n}",
        "",
        f"GRPO: {settings.grpo_steps} steps per arm and seed, arms overriding {settings.config.name}"
        f"{_provenance(evaluations)}{_augment_text(settings)}. Evaluation: the synthetic test split "
        f"(data seed {settings.seed}), rule judge. Cells: mean ± half the range over seeds (SFT: one greedy "
        "evaluation).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label, group in groups.items():
        seeds = ",".join(str(e.seed) for e in group) if group[0].seed is not None else NULL
        cells = [
            spread_cell([_get(e.metrics, v, k) for e in group], s, d) + _user_mode_mark(group, v)
            for _, v, k, s, d in columns
        ]
        lines.append("| " + " | ".join([label, seeds, *cells]) + " |")
    if any(_user_mode_mark(group, v) for group in groups.values() for v in variants):
        lines += [
            "",
            f"{USER_MODE_MARK} prefill written into the user turn, not the model's own (prefill_mode)",
        ]
    arms = [e for e in evaluations if e.seed is not None]
    if "base" in variants and arms:
        sft = _get(groups["sft"][0].metrics, "base", "accuracy")
        seeds = sorted({e.seed for e in arms})
        lines += ["", "Base accuracy % per GRPO seed (Δ against the SFT model in points):", ""]
        lines += ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
        for label, group in groups.items():
            if label == "sft":
                continue
            by_seed = {e.seed: _get(e.metrics, "base", "accuracy") for e in group}
            cells = [_with_delta(by_seed.get(s), sft) for s in seeds]
            lines.append("| " + " | ".join([label, *cells]) + " |")
    if sampled:
        lines += ["", *sampled_table(sampled)]
    if findings:
        from vlmstress.findings import findings_markdown

        lines += ["", findings_markdown(findings).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _augment_text(settings: StudySettings) -> str:
    """The augment arms' rates, as study.md states them ("" when the config cannot be read)."""
    try:
        rates = arm_config(base_config(settings), ARMS[1]).augment
    except (OSError, UsageError):
        return ""
    return "; the augment arms' prompt augmentation: " + ", ".join(
        f"{kind} {rate:g}" for kind, rate in rates.items() if rate
    )


def by_label(evaluations: Sequence[Evaluation]) -> dict[str, list[Evaluation]]:
    """The evaluations of each model (SFT, or an arm's seeds), in study order."""
    groups: dict[str, list[Evaluation]] = {}
    for e in evaluations:
        groups.setdefault(e.label, []).append(e)
    return groups


def consistency_share(metrics: Mapping[str, Any], variant: str = "base") -> float | None:
    """Share of a variant's judged answers (consistent or inconsistent) the judge found consistent."""
    q = _get(metrics, variant, "quadrants") or {}
    judged = [q.get(k) for k in ("consistent_correct", "consistent_incorrect", "inconsistent_correct")]
    judged.append(q.get("inconsistent_incorrect"))
    if any(v is None for v in judged) or not sum(judged):
        return None
    return (judged[0] + judged[1]) / sum(judged)


SAMPLED_LEAD = (
    f"Base answers sampled at temperature {SAMPLING['temperature']:g}, as GRPO samples them "
    f"({SAMPLED}/; mean ± half the range over seeds): accuracy, and CoT consistency (the share of "
    "judged answers the judge finds consistent with their own think)."
)


def sampled_rows(sampled: Sequence[Evaluation]) -> list[dict[str, str]]:
    """One row per model of the sampled evaluations (sampled/): its seeds, base accuracy % and CoT
    consistency % as study.md and the report's Findings show them (findings.json's `sampled`)."""
    rows = []
    for label, group in by_label(sampled).items():
        rows.append(
            {
                "model": label,
                "seeds": ",".join(str(e.seed) for e in group) if group[0].seed is not None else NULL,
                "accuracy": spread_cell([_get(e.metrics, "base", "accuracy") for e in group], 100.0, 1),
                "consistency": spread_cell([consistency_share(e.metrics) for e in group], 100.0, 1),
            }
        )
    return rows


def sampled_table(sampled: Sequence[Evaluation]) -> list[str]:
    """study.md's table of the sampled evaluations (sampled/): base accuracy and CoT consistency."""
    lines = [
        SAMPLED_LEAD,
        "",
        "| model | seeds | sampled base acc % | sampled base consistency % |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['seeds']} | {r['accuracy']} | {r['consistency']} |"
        for r in sampled_rows(sampled)
    ]
    return lines


def _provenance(evaluations: Sequence[Evaluation]) -> str:
    """Where the arms' policies come from, as study.md's header says it."""
    origins = [e.origin for e in evaluations if e.seed is not None]
    shipped = origins.count("shipped")
    if not shipped:
        return "; every arm trained in this run" if origins else ""
    if shipped == len(origins):
        return (
            "; the arms are the shipped checkpoints (trained by the same recipe with "
            "`vlmstress demo --retrain`, not in this run; their dynamics are those runs' logs)"
        )
    return f"; {shipped} of {len(origins)} arm runs are shipped checkpoints, the rest trained in this run"


def _user_mode_mark(group: Sequence[Evaluation], variant: str) -> str:
    """† on a cell whose variant's prefill went into the user turn in any of the group's runs."""
    modes = {_get(e.metrics, variant, "prefill_mode") for e in group}
    return f" {USER_MODE_MARK}" if modes & {"user", "mixed"} else ""


def _with_delta(acc: float | None, sft: float | None) -> str:
    if acc is None:
        return NULL
    return f"{100 * acc:.1f}" + ("" if sft is None else f" ({100 * (acc - sft):+.1f})")
