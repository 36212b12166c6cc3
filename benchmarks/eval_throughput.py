"""Batched runner vs a naive one-prompt-at-a-time `generate` loop, same tiny model and prompts.

Checks the greedy completions are identical, then prints as its last line
`speedup=X overhead=Y`: speedup = naive wall time / runner wall time; overhead = runner wall time /
time spent inside model calls (parsing, judging, record writing and the progress bar on top).

    python benchmarks/eval_throughput.py [--n 64] [--batch-size 32] [--model tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlmstress.data import synth
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.registry import load_model
from vlmstress.perturb import perturb
from vlmstress.runlog import read_records
from vlmstress.runner import RunSpec, run_eval


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    samples = synth.generate(args.n, seed=0, split="test")
    spec = RunSpec(
        model=args.model,
        data=f"synth:{args.n}",
        variants=["base"],
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    naive_texts, naive_s = naive(model, [perturb(s, "base", 0) for s in samples], args.max_new_tokens)

    model_seconds = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_eval(
            model,
            samples,
            spec,
            out,
            judges=[RuleJudge()],
            progress=False,
            on_batch=lambda n, s: model_seconds.append(s),
        )
        runner_s = time.perf_counter() - t0
        records = {r["sample_id"]: r for r in read_records(Path(out) / "records.jsonl")}

    same = sum(
        records[s.sample_id]["response"] == t.split("<|im_end|>")[0] for s, t in zip(samples, naive_texts)
    )
    print(
        f"prompts={args.n} batch_size={args.batch_size} naive={naive_s:.2f}s runner={runner_s:.2f}s "
        f"model_calls={sum(model_seconds):.2f}s identical={same}/{args.n}"
    )
    if same != args.n:
        raise SystemExit("batched and one-at-a-time greedy outputs differ")
    print(f"speedup={naive_s / runner_s:.2f} overhead={runner_s / sum(model_seconds):.2f}")


if __name__ == "__main__":
    main()
