"""Make a retrained study's GRPO arms the shipped ones (a maintainer's step, from a source checkout).

    vlmstress demo --retrain --out runs/study-retrain      # hours on a CPU: every arm and seed
    python scripts/ship_arms.py runs/study-retrain          # -> src/vlmstress/assets/study/

Each arm's final policy is written with float16 weights, beside its dynamics.jsonl and trained.json
(the SFT weights' digest and the arm's whole config). `vlmstress demo` then uses an arm only where
it would train exactly that run itself, so arms shipped for other SFT weights are never used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmstress.errors import UsageError
from vlmstress.study import SHIPPED_ARMS, ship_arms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study folder trained with `vlmstress demo --retrain`")
    ap.add_argument("--dest", type=Path, default=SHIPPED_ARMS, help="where to write (%(default)s)")
    args = ap.parse_args()
    try:
        written = ship_arms(args.study, args.dest)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for folder in written:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
