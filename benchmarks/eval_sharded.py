"""Sharded `vlmstress eval` throughput per process count, same model, data and batches.

Runs the same eval with 1 process (`python -m vlmstress.cli eval`) and with k processes
(`torchrun --standalone --nproc_per_node k`), one after the other, each into a fresh directory; checks
every sharded run wrote the same records.jsonl as the one-process run; prints one row per process
count:
  wall s      the whole command: interpreter and torch start-up, model load, evaluation, merge
  eval s      config.json -> metrics.json (written at the start and the end of the evaluation)
  samples/s   samples (each under every variant) per wall second, and per eval second
  same log    records.jsonl byte for byte the one-process run's

    python benchmarks/eval_sharded.py [--n 40] [--processes 1,2] [--model tiny] [--batch-size 4]

Every process runs one torch thread (OMP_NUM_THREADS=1), so k processes use k cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(processes: int, eval_args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "vlmstress.cli", *eval_args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    return [*launcher, str(processes), "-m", "vlmstress.cli", *eval_args]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=40, help="synth samples")
    ap.add_argument("--variants", default="base,wrong_think")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    args = ap.parse_args()
    counts = [int(k) for k in args.processes.split(",")]
    n_variants = len(args.variants.split(","))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            out = Path(tmp) / f"p{k}"
            eval_args = ["eval", "--model", args.model, "--data", f"synth:{args.n}"]
            eval_args += ["--variants", args.variants, "--batch-size", str(args.batch_size)]
            eval_args += ["--max-new-tokens", str(args.max_new_tokens), "--out", str(out)]
            t0 = time.perf_counter()
            res = subprocess.run(command(k, eval_args), env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(f"{k} process(es) failed:\n{res.stderr[-2000:]}")
            eval_s = (out / "metrics.json").stat().st_mtime - (out / "config.json").stat().st_mtime
            records = (out / "records.jsonl").read_bytes()
            reference = reference if reference is not None else records
            rows.append((k, wall, eval_s, records == reference))

    print(
        f"model={args.model} samples={args.n} variants={n_variants} prompts={args.n * n_variants} "
        f"batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} cpus={os.cpu_count()}"
    )
    print("| processes | wall s | eval s | samples/s (wall) | samples/s (eval) | speedup (eval) | same log |")
    print("|---|---|---|---|---|---|---|")
    base_eval = rows[0][2]
    for k, wall, eval_s, same in rows:
        print(
            f"| {k} | {wall:.1f} | {eval_s:.1f} | {args.n / wall:.2f} | {args.n / eval_s:.2f} "
            f"| {base_eval / eval_s:.2f} | {'yes' if same else 'NO'} |"
        )
    if not all(same for *_, same in rows):
        raise SystemExit("a sharded run wrote other records than the one-process run")


if __name__ == "__main__":
    main()
