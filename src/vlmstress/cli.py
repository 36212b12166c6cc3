"""The `vlmstress` command line. Bad usage is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from vlmstress.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one clear line
        raise UsageError(f"{self.prog}: {message}")


def _whole(minimum: int, what: str):
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _whole(1, "a positive number")
_non_negative_int = _whole(0, "0 or more")


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:  # float() takes "nan" and "inf"; a price is neither
        raise argparse.ArgumentTypeError(f"expected a price of 0 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vlmstress", description="Stress-test the reasoning of vision-language models.")
    # Every subcommand takes --include: user code registers what it adds (register_*) as it imports.
    user_code = _Parser(add_help=False)
    user_code.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="FILE.py",
        help="import this Python file first (repeatable): it may register variants, templates, backends, "
        "judges, metrics, rewards, augmentation kinds and training sources",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from vlmstress import study
    from vlmstress.perturb import TEMPLATES, VARIANTS

    d = sub.add_parser(
        "demo",
        parents=[user_code],
        help="the whole study on the embedded default: the SFT model and its GRPO arms, evaluated "
        "under every variant (vlmstress.study)",
    )
    d.add_argument("--out", default="runs/demo", help="study folder; a rerun with the same --out resumes")
    d.add_argument(
        "--seed", type=int, default=0, help="data seed: test set, misleading letters, training pool"
    )
    d.add_argument(
        "--n",
        type=_positive,
        default=study.DEFAULT_N,
        help="synth test samples each model is evaluated on (%(default)s)",
    )
    d.add_argument(
        "--seeds",
        default=",".join(map(str, study.DEFAULT_SEEDS)),
        help="comma-separated GRPO training seeds: one run per arm and seed (%(default)s)",
    )
    d.add_argument(
        "--grpo-steps",
        type=_positive,
        default=study.DEFAULT_GRPO_STEPS,
        help="GRPO steps per run (%(default)s)",
    )
    d.add_argument(
        "--model", default="tiny", help="the SFT model the arms start from: tiny | tiny:DIR | hf:ID"
    )
    d.add_argument("--config", default=str(study.DEFAULT_CONFIG), help="the GRPO config every arm overrides")
    d.add_argument(
        "--no-train",
        action="store_true",
        help="evaluate only: the SFT model and the arms already in --out or shipped with the package",
    )
    d.add_argument(
        "--retrain",
        action="store_true",
        help="train every GRPO arm here by the recipe, even where a shipped checkpoint matches (hours "
        "on a CPU); without it the default study evaluates the arms shipped with the package",
    )

    e = sub.add_parser("eval", parents=[user_code], help="evaluate a model under the perturbation suite")
    e.add_argument(
        "--model",
        required=True,
        help="tiny | tiny:DIR | hf:ID | vllm:ID | openai:MODEL@URL | replay:FILE (or a registered backend)",
    )
    e.add_argument("--data", required=True, help="synth[:N] | a benchmark name | a local file")
    e.add_argument(
        "--variants",
        default="all",
        help=f"all, or a comma list of: {', '.join(VARIANTS)} (and any --include registers)",
    )
    e.add_argument(
        "--judge",
        nargs="+",
        default=["rule"],
        help="consistency judges: rule (or another registered judge) and/or model SPECs (rule)",
    )
    e.add_argument(
        "--extract",
        default=None,
        metavar="SPEC",
        help="a model SPEC that reads the answer of completions the rules cannot parse (counted: "
        "parse_mode extract, extract_rate); default none",
    )
    e.add_argument("--data-dir", default=None, help="a local copy of a benchmark, laid out as its hub repo")
    e.add_argument("--limit", type=_positive, default=None, help="evaluate the first N samples only")
    e.add_argument("--seed", type=int, default=0, help="seed of the misleading letters and of synth data (0)")
    e.add_argument("--batch-size", type=_positive, default=16, help="prompts per model call (16)")
    e.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=96,
        help="completion budget in tokens; raise it for reasoning models (96)",
    )
    e.add_argument(
        "--template", default="vlmstress", help=f"prompt template: {', '.join(TEMPLATES)} (or a user's)"
    )
    e.add_argument(
        "--system",
        default=None,
        metavar="TEXT|@FILE",
        help="system prompt of every prompt, or @FILE to read it from a file; default: the model's "
        "documented one (VLAA-Thinker's), else none; '' for none",
    )
    e.add_argument("--out", default=None, help="run directory (default runs/<model>-<data>)")
    e.add_argument(
        "--model-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, repeatable (e.g. dtype=bfloat16, device=cuda, tensor_parallel_size=2)",
    )
    e.add_argument(
        "--retry-failed",
        action="store_true",
        help="on a rerun, make the model calls that failed (timeouts, refusals) again; else kept as errors",
    )
    e.add_argument("--dry-run", action="store_true", help="print requests, tokens and cost; run nothing")
    e.add_argument("--price-in", type=_price, default=None, help="with --dry-run: price per 1M prompt tokens")
    e.add_argument(
        "--price-out", type=_price, default=None, help="with --dry-run: price per 1M generated tokens"
    )
    e.add_argument(
        "--image-tokens",
        type=_non_negative_int,
        default=None,
        help="with --dry-run: tokens per image (default: the model's own image processor's count on the "
        "samples' images where it is on this machine, else 1200)",
    )

    t = sub.add_parser("train", parents=[user_code], help="SFT or GRPO training")
    t.add_argument("kind", choices=["sft", "grpo"], help="sft: the tiny model's recipe; grpo: TRL's GRPO")
    t.add_argument("--config", required=True, help="the training config (YAML), e.g. configs/grpo-tiny.yaml")
    t.add_argument("--max-steps", type=_positive, default=None, help="override the config's max_steps")
    t.add_argument("--seed", type=int, default=None, help="override the config's training seed")
    t.add_argument("--out", default=None, help="override the config's output folder")
    t.add_argument(
        "--seeds", default=None, help="comma-separated seeds: one GRPO run per seed under OUT/seed-S"
    )

    r = sub.add_parser(
        "report", parents=[user_code], help="tables, plots and an HTML report of one or more runs"
    )
    r.add_argument("dirs", nargs="+", metavar="DIR", help="run folders (eval runs, GRPO runs, arm folders)")
    r.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="the HTML page to write; FILE.md and FILE.tex go beside it (default: report.html in the "
        "run folder, or in the runs' common parent)",
    )
    r.add_argument(
        "--reference",
        default=None,
        metavar="LABEL",
        help="the run every other run is compared with in 'Run against run': a run's label or folder "
        "name (default: the first evaluation run)",
    )
    r.add_argument(
        "--all-pairs", action="store_true", help="compare every pair of runs, not each with the reference"
    )

    s = sub.add_parser("data", parents=[user_code], help="write a dataset to disk")
    s.add_argument("what", choices=["synth"], help="synth: the synthetic benchmark (data.jsonl + PNGs)")
    s.add_argument("--n", type=_positive, required=True, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="generator seed (0)")
    s.add_argument(
        "--split", choices=["train", "test", "val"], default="test", help="disjoint streams (test)"
    )
    s.add_argument("--out", required=True, help="folder to write (readable by eval --data)")
    return p


def cmd_eval(args) -> int:
    from vlmstress.api import prepare_eval
    from vlmstress.models.registry import JUDGES, check_judge_spec

    # Everything the user can get wrong is checked before the run directory is created or locked.
    run = prepare_eval(
        args.model,
        args.data,
        variants=args.variants,
        judges=args.judge,
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        template=args.template,
        model_options=_model_options(args.model_opt),
        data_dir=args.data_dir,
        system=_system_text(args.system),
        extract=args.extract,
    )
    spec, samples = run.spec, run.samples
    out = Path(args.out or f"runs/{_slug(spec.model)}-{_slug(args.data)}")
    if not args.dry_run:  # a plan needs no model (its checkpoint may be on another machine)
        from vlmstress.usage import check_can_create, check_model

        check_model(args.model, _model_options(args.model_opt))
        for judge in args.judge:
            if check_judge_spec(judge) not in JUDGES:  # an LLM judge: its model's checks
                check_model(judge, {})
        if args.extract is not None:
            check_model(args.extract, {})
        check_can_create(out, "--out")
    if args.dry_run:
        from vlmstress.plan import DEFAULT_IMAGE_TOKENS, image_tokens_from_processor, plan_run
        from vlmstress.shard import rank_from_env

        if rank_from_env() != 0:  # under a launcher the plan is printed once, by rank 0
            return 0
        llm_judges = sum(check_judge_spec(j) not in JUDGES for j in args.judge)  # a model SPEC: LLM calls
        image_tokens, source = args.image_tokens, "--image-tokens"
        if image_tokens is None:
            image_tokens, why = image_tokens_from_processor(args.model, samples)
            source = f"processor: {why}" if image_tokens is not None else f"default ({why})"
            image_tokens = DEFAULT_IMAGE_TOKENS if image_tokens is None else image_tokens
        plan = plan_run(
            samples,
            spec.variants,
            seed=args.seed,
            template=args.template,
            max_new_tokens=args.max_new_tokens,
            llm_judges=llm_judges,
            image_tokens=image_tokens,
            price_in=args.price_in,
            price_out=args.price_out,
            system=spec.system,
        )
        tokens = {"image_tokens": image_tokens, "image_tokens_from": source}
        print(json.dumps({"model": spec.model, "data": spec.data, **plan.to_json(), **tokens}, indent=2))
        return 0
    from vlmstress import shard

    if shard.world_size_from_env() > 1:  # one rank of a torchrun / accelerate launch run
        metrics = shard.run_distributed(
            lambda: run.backends(out), samples, spec, out, retry_failed=args.retry_failed
        )
        if metrics is None:  # not rank 0: rank 0 merges the shards and reports (or says why not)
            return 0
        _print_summary(out, metrics)
        return 0
    # The lock (and a resume's config check) come before the model loads (PreparedEval.run); a
    # usage error found only by a backend takes back the run folder it created.
    from vlmstress.usage import leaves_nothing_on_usage_error

    with leaves_nothing_on_usage_error(out):
        metrics = run.run(
            out, progress=True, retry_failed=args.retry_failed, log=print, with_records=False
        ).metrics
    _print_summary(out, metrics)
    return 0


def _system_text(value: str | None) -> str | None:
    """--system TEXT as given; --system @FILE the file's text (a trailing newline dropped)."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n")
    except FileNotFoundError:
        raise UsageError(f"--system {value}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--system {value}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--system {value}: cannot read it ({exc.strerror or exc})") from None


def _model_options(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; values read as YAML scalars (2 -> int, true -> bool), never evaluated."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-opt takes KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # a tag (!!python/...) or broken YAML: one line, not four
            raise UsageError(
                f"--model-opt {key.strip()}: not a plain value ({str(exc).splitlines()[0]})"
            ) from None
    return options


def cmd_demo(args) -> int:
    from vlmstress.study import StudySettings, run_study
    from vlmstress.train.grpo import parse_seeds

    if args.retrain and args.no_train:
        raise UsageError("--retrain trains every arm and --no-train trains none: pass one of them")
    settings = StudySettings(
        out=Path(args.out),
        model=args.model,
        config=Path(args.config),
        seeds=tuple(parse_seeds(args.seeds) or ()),
        grpo_steps=args.grpo_steps,
        n=args.n,
        seed=args.seed,
        train=not args.no_train,
        retrain=args.retrain,
    )
    start = time.monotonic()
    result = run_study(settings)
    print(result.table)
    print(f"study table in {result.study_md}; HTML report: {result.report}")
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    print(f"total time {minutes}:{seconds:02d}")
    return 0


def cmd_train(args) -> int:
    from vlmstress.train.config import SFTConfig, load_config

    if args.kind == "grpo":
        from vlmstress.train.grpo import run_grpo_command

        return run_grpo_command(args)
    cfg = load_config(args.config, SFTConfig, max_steps=args.max_steps, seed=args.seed, out=args.out)
    from vlmstress.train.sft import synth_accuracy, train_sft

    out = train_sft(
        cfg, evaluate=lambda m, p: synth_accuracy(m, p, cfg.eval_samples, cfg.seed, cfg.hard_share)
    )
    print(f"checkpoint written to {out} (use it with --model tiny:{out})")
    return 0


def cmd_report(args) -> int:
    from vlmstress.report import build_report

    html = build_report(
        [Path(d) for d in args.dirs],
        html=Path(args.html) if args.html else None,
        reference=args.reference,
        all_pairs=args.all_pairs,
        log=lambda line: print(f"vlmstress: {line}", file=sys.stderr, flush=True),
    )
    # build_report writes the Markdown and LaTeX tables beside the page: name all three
    print(f"report written to {html}, {html.with_suffix('.md')} and {html.with_suffix('.tex')}")
    return 0


def cmd_data(args) -> int:
    from vlmstress.data import synth
    from vlmstress.usage import check_can_create

    check_can_create(args.out, "data synth --out")
    path = synth.write(synth.generate(args.n, seed=args.seed, split=args.split), args.out)
    print(f"wrote {args.n} samples to {path}")
    return 0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.split("@")[0])[:60]


def _print_summary(out: Path, metrics: dict) -> None:
    # The Markdown table as is: wide tables wrap badly in a rendered terminal table.
    from vlmstress.runlog import RECORDS, iter_records
    from vlmstress.runner import failed_call

    print((out / "summary.md").read_text())
    print(f"records, metrics and summary in {out}")
    failed = sum(map(failed_call, iter_records(out / RECORDS)))
    if failed:
        print(f"{failed} model call(s) failed (their records say why); a rerun with --retry-failed retries")


COMMANDS = {"eval": cmd_eval, "demo": cmd_demo, "train": cmd_train, "report": cmd_report, "data": cmd_data}


def _warnings_to_stderr() -> None:
    """The library's warnings (logger `vlmstress`) as one line each, in the form errors take."""
    import logging

    logger = logging.getLogger("vlmstress")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vlmstress: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    _warnings_to_stderr()
    try:
        args = build_parser().parse_args(argv)
        from vlmstress.plugins import include, load_entry_points

        load_entry_points()  # installed plugins (the vlmstress.plugins group), then --include files
        include(args.include)  # before the command: it may name what they register
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"vlmstress: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmstress: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("VLMSTRESS_DEBUG"):
            raise
        print(
            f"vlmstress: failed: {type(e).__name__}: {e} (set VLMSTRESS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
