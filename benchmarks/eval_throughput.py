"""The runner against two plain `generate` loops, same tiny model, same prompts, in one process.

Contenders:
- naive: one prompt at a time (processor call, `generate`, decode), what a first script does; run once.
- raw: a plain batched loop over the runner's own batches (same batch size, same order): one
  processor call, `generate(do_sample=False)`, `batch_decode` a batch; no letter scores, no parsing,
  no records. What lmms-eval's generate_until does.
- runner: `run_eval` (letter probabilities from the generation pass, parsing, the rule judge,
  records fsynced batch by batch, metrics.json).

Raw and runner run alternately (which goes first alternating too), `--reps` times each after one
untimed warm-up of each, one torch thread, so that a busy machine slows both alike; the runner gets
freshly loaded samples each time, as a new run would (its image cache starts empty). It checks
every greedy completion is identical across the three, then prints, as its last line,

    speedup=X overhead=Y raw_ratio=Z

speedup = naive wall / runner wall; overhead = runner wall / time inside the runner's model calls;
raw_ratio = runner / raw, the geometric mean of the per-pair ratios of process CPU time (CPU time,
not wall: the other processes of a shared machine inflate wall time by chance, CPU time far less).
The lines above it give the wall-time ratio (raw_ratio_wall: it also counts the runner's waits on
its per-batch fsyncs, the crash-safety of docs/reliability.md) and each loop's CPU time per prompt
inside the model's `generate` (the same model work) and outside it (what the loop itself costs).

    python benchmarks/eval_throughput.py [--n 100] [--batch-size 16] [--reps 8] [--variants base]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlmstress.data import synth
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.registry import load_model
from vlmstress.perturb import perturb
from vlmstress.runlog import read_records
from vlmstress.runner import RunSpec, batches, plan, run_eval


class Clock:
    """Wall and process CPU seconds of a block, and the CPU seconds inside `generate` in it."""

    in_generate = 0.0  # CPU seconds inside the model's `generate`, summed by `counted`

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0, self.gen0 = time.perf_counter(), time.process_time(), Clock.in_generate
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
        self.outside = self.cpu - (Clock.in_generate - self.gen0)  # the loop's own CPU: all but generate


def counted(generate):
    """`generate` adding its CPU time to Clock.in_generate: the same model work in both loops, so
    what is left (the processor, scoring, records) is the part a loop adds, measured with less of
    the noise that the model's own time carries."""

    def timed(*args, **kwargs):
        t0 = time.process_time()
        try:
            return generate(*args, **kwargs)
        finally:
            Clock.in_generate += time.process_time() - t0

    return timed


def naive(model, prompts, max_new_tokens: int) -> tuple[list[str], float]:
    """What a first script does: one prompt, one processor call, one `generate`."""
    texts = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            enc = model.processor(text=[model.prompt_text(p)], images=[p.image], return_tensors="pt")
            out = model.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[0, enc["input_ids"].shape[1] :]
            texts.append(model.tokenizer.decode(new, skip_special_tokens=True))
    return texts, time.perf_counter() - t0


def raw(model, prompt_batches, max_new_tokens: int) -> list[str]:
    """A plain batched loop: the chat template, one processor call, greedy `generate`, decode."""
    texts = []
    with torch.no_grad():
        for prompts in prompt_batches:
            enc = model.processor(
                text=[model.prompt_text(p) for p in prompts],
                images=[im for p in prompts for im in p.images],
                return_tensors="pt",
                padding=True,
                padding_side="left",
            )
            out = model.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
            )
            texts += model.tokenizer.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
    return texts


def runner(model, samples, spec, out: Path) -> float:
    """run_eval into `out`, a new folder; the seconds spent inside model calls.

    `samples` should be freshly loaded for each call, as a new run loads them: the model's image
    cache knows images by object, and images it kept from an earlier repetition would spare this one
    work that a real run does (and the raw loop does)."""
    model_seconds = []
    run_eval(
        model,
        samples,
        spec,
        out,
        judges=[RuleJudge()],
        progress=False,
        on_batch=lambda n, s: model_seconds.append(s),
    )
    return sum(model_seconds)


def records_of(out: Path) -> dict:
    """{(sample_id, variant): record} of a run folder, which is then removed (outside the timing)."""
    records = {(r["sample_id"], r["variant"]): r for r in read_records(out / "records.jsonl")}
    shutil.rmtree(out)
    return records


def geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--variants", default="base", help="comma-separated variants")
    ap.add_argument("--reps", type=int, default=8, help="alternating raw/runner pairs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    model.model.generate = counted(model.model.generate)
    samples = synth.generate(args.n, seed=0, split="test")
    spec = RunSpec(
        model=args.model,
        data=f"synth:{args.n}",
        variants=args.variants.split(","),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    # The runner's own plan and batches: the raw loop sees the same prompts batched the same way.
    todo, errors = plan(samples, spec.variants, spec.seed, spec.template, set(), spec.system)
    if errors:
        raise SystemExit(f"{len(errors)} prompts cannot run; pick variants every synth sample takes")
    pairs = list(todo)
    keys = [(s.sample_id, p.variant) for s, p in pairs]
    prompt_batches = [[p for _, p in chunk] for chunk in batches(pairs, spec.batch_size)]

    base = [perturb(s, "base", spec.seed) for s in samples]
    naive_texts, naive_s = naive(model, base, args.max_new_tokens) if spec.variants == ["base"] else ([], 0.0)

    def load():  # the samples as a new run loads them: new image objects
        return synth.generate(args.n, seed=0, split="test")

    tmp = Path(tempfile.mkdtemp())
    raw(model, prompt_batches, args.max_new_tokens)  # warm-ups, untimed
    runner(model, load(), spec, tmp / "warm-up")
    raw_clock, run_clock, model_s = [], [], []
    for rep in range(args.reps):
        fresh, out = load(), tmp / f"run{rep}"
        # Alternate which goes first, so that a drift in the machine's load favours neither.
        for name in ("raw", "runner") if rep % 2 == 0 else ("runner", "raw"):
            with Clock() as c:
                if name == "raw":
                    raw_texts = raw(model, prompt_batches, args.max_new_tokens)
                else:
                    model_s.append(runner(model, fresh, spec, out))
            (raw_clock if name == "raw" else run_clock).append(c)
        records = records_of(out)
    shutil.rmtree(tmp)

    responses = [records[k]["response"] for k in keys]
    same_raw = sum(a == b for a, b in zip(responses, raw_texts, strict=True))
    same_naive = sum(records[(s.sample_id, "base")]["response"] == t for s, t in zip(samples, naive_texts))
    cpu_ratios = [r.cpu / w.cpu for r, w in zip(run_clock, raw_clock)]
    wall_ratios = [r.wall / w.wall for r, w in zip(run_clock, raw_clock)]
    runner_wall = statistics.median(c.wall for c in run_clock)
    clocks = {"raw": raw_clock, "runner": run_clock}
    print(
        f"prompts={len(pairs)} batch_size={spec.batch_size} reps={args.reps} threads={args.threads} "
        f"variants={args.variants}"
    )
    print("raw    cpu s: " + " ".join(f"{c.cpu:.2f}" for c in raw_clock))
    print("runner cpu s: " + " ".join(f"{c.cpu:.2f}" for c in run_clock))
    print("raw    wall s: " + " ".join(f"{c.wall:.2f}" for c in raw_clock))
    print("runner wall s: " + " ".join(f"{c.wall:.2f}" for c in run_clock))
    print(
        f"naive={naive_s:.2f}s runner={runner_wall:.2f}s (median wall) "
        f"model_calls={statistics.median(model_s):.2f}s (median) "
        f"identical_raw={same_raw}/{len(pairs)}"
        + (f" identical_naive={same_naive}/{len(samples)}" if naive_texts else "")
    )
    if same_raw != len(pairs) or (naive_texts and same_naive != len(samples)):
        raise SystemExit("the runner's greedy completions differ from a plain generate loop's")
    speedup = f"{naive_s / runner_wall:.2f}" if naive_texts else "n/a"
    for name, ratios in (("cpu", cpu_ratios), ("wall", wall_ratios)):
        print(
            f"runner/raw {name}: geomean {geomean(ratios):.3f} median {statistics.median(ratios):.3f} "
            f"(per pair: {' '.join(f'{x:.2f}' for x in ratios)})"
        )
    for where, part in (("inside", lambda c: c.cpu - c.outside), ("outside", lambda c: c.outside)):
        per_prompt = {n: statistics.median(map(part, cs)) / len(pairs) * 1e3 for n, cs in clocks.items()}
        print(
            f"cpu {where} generate(), per prompt (median): raw {per_prompt['raw']:.2f} ms, "
            f"runner {per_prompt['runner']:.2f} ms"
        )
    print(f"raw_ratio_wall={geomean(wall_ratios):.2f}")
    print(
        f"speedup={speedup} overhead={runner_wall / statistics.median(model_s):.2f} "
        f"raw_ratio={geomean(cpu_ratios):.2f}"
    )


if __name__ == "__main__":
    main()
