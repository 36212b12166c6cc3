"""Peak memory of `vlmstress eval` against the number of samples: flat in N, or not.

For each N (1k and 10k by default) the script writes, into a temp dir, a .jsonl data file of N
multiple-choice rows, each pointing at one of a few small PNG files, and a replay file holding a
response (with letter probabilities) for every (sample, variant); then it runs

    python -m vlmstress eval --model replay:FILE.jsonl --data DATA.jsonl --variants VARIANTS ...

in a fresh subprocess and reads the child's peak RSS (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss,
taken in a fresh helper process per run so one run's peak cannot hide another's). It prints one row
per N and, as its last line, `rss_ratio=X`: the peak RSS at the largest N over that at the smallest
(flat memory reads about 1.0; memory linear in N reads about N_max / N_min).

    python benchmarks/memory.py [--n 1000,10000] [--variants all] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in a fresh interpreter per measurement: it starts the eval as its child, waits, and prints the
# child's peak RSS in KiB (ru_maxrss is KiB on Linux) and its exit status.
_MEASURE = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc.returncode)
sys.stderr.write(rc.stderr[-2000:])
"""

N_IMAGES = 8


def write_inputs(folder: Path, n: int, variants: list[str]) -> tuple[Path, Path]:
    """A data file of `n` rows (4 options, a hint, a family and a small extra column) and a replay
    file answering every (sample, variant) with a short think, an answer and letter probabilities."""
    from PIL import Image

    images = []
    for i in range(N_IMAGES):
        path = folder / f"img{i}.png"
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(path)
        images.append(path.name)
    data, replay = folder / f"data{n}.jsonl", folder / f"replay{n}.jsonl"
    with data.open("w") as d, replay.open("w") as r:
        for i in range(n):
            sid = f"q{i:06d}"
            row = {
                "id": sid,
                "question": f"Which object is left of the red cube in scene {i}?",
                "options": ["the blue ball", "the green cone", "the yellow cylinder", "nothing"],
                "answer": "ABCD"[i % 4],
                "image": images[i % N_IMAGES],
                "family": ("left_right", "count", "color")[i % 3],
                "source": "memory-benchmark",
            }
            d.write(json.dumps(row) + "\n")
            for v in variants:
                letter = "ABCD"[(i + len(v)) % 4]
                probs = dict(zip("ABCD", (0.1, 0.1, 0.1, 0.1)))
                probs[letter] = 0.7
                response = (
                    f"The red cube sits in the middle; looking left of it I see option {letter}.</think>"
                    f"<answer>{letter}</answer>"
                )
                r.write(
                    json.dumps({"sample_id": sid, "variant": v, "response": response, "letter_probs": probs})
                    + "\n"
                )
    return data, replay


def peak_rss_kib(cmd: list[str], env: dict[str, str]) -> int:
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True, check=False
    )
    fields = res.stdout.split()
    if len(fields) != 2 or fields[1] != "0":
        raise SystemExit(f"eval failed:\n{res.stdout}\n{res.stderr}")
    return int(fields[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1000,10000", help="comma-separated sample counts")
    ap.add_argument("--variants", default="all")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    counts = [int(k) for k in args.n.split(",")]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vlmstress.perturb import resolve_variants

    variants = resolve_variants(args.variants)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            data, replay = write_inputs(Path(tmp), n, variants)
            out = Path(tmp) / f"run{n}"
            cmd = [sys.executable, "-m", "vlmstress", "eval", "--model", f"replay:{replay}"]
            cmd += ["--data", str(data), "--variants", ",".join(variants), "--out", str(out)]
            cmd += ["--batch-size", str(args.batch_size)]
            kib = peak_rss_kib(cmd, env)
            lines = (out / "records.jsonl").read_bytes().count(b"\n")
            peaks.append(kib)
            print(f"n={n} variants={len(variants)} records={lines} peak_rss={kib / 1024:.0f}MB")
            for path in (data, replay):
                path.unlink()
    if len(counts) > 1:
        growth = (peaks[-1] - peaks[0]) * 1024 / (counts[-1] - counts[0])
        print(f"growth={growth / 1000:.1f}KB per sample ({growth / 1000 / len(variants):.2f}KB per record)")
    print(f"rss_ratio={peaks[-1] / peaks[0]:.2f}")


if __name__ == "__main__":
    main()
