"""Data SPEC -> Samples: `synth[:N]` (`synth-hard[:N]` with its difficulty axis), a benchmark name,
or a local table file (design.md, Data SPEC)."""

from __future__ import annotations

import re
from pathlib import Path

from vlmstress.data.benchmarks import BENCHMARKS, load_benchmark
from vlmstress.data.files import TABLE_SUFFIXES, load_file
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError

DEFAULT_SYNTH_N = 200
_SYNTH = re.compile(r"synth(-hard)?(?::(.*))?", re.IGNORECASE)


def load_data(
    spec: str, *, data_dir: str | None = None, limit: int | None = None, seed: int = 0
) -> tuple[list[Sample], str]:
    """The samples a Data SPEC names (first `limit` only) and the SPEC's canonical name.

    Canonical names: `synth:N` / `synth-hard:N`, the benchmark's name, or the file's absolute path.
    `data_dir` only matters for benchmarks; `seed` for the synthetic set and for WhatsUp's option order.
    """
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be >= 0, got {limit}")
    spec = spec.strip()
    synth = _SYNTH.fullmatch(spec)
    if synth:
        n = _synth_n(synth.group(2))
        from vlmstress.data import synth as synth_module  # lazy: only synthetic runs draw images

        hard = synth_module.HARD_SHARE if synth.group(1) else 0.0
        samples = synth_module.generate(n, seed=seed, split="test", hard_share=hard)
        name = f"synth{'-hard' if hard else ''}:{n}"
    elif spec.lower() in BENCHMARKS:
        name = spec.lower()
        samples = load_benchmark(name, data_dir=data_dir, limit=limit, seed=seed)
    elif spec and _is_file(spec):
        path = Path(spec).expanduser().resolve()
        samples, name = load_file(path, limit=limit), str(path)
    elif Path(spec).suffix.lower() in TABLE_SUFFIXES:
        raise UsageError(f"data file not found: {spec}")
    else:
        raise UsageError(
            f"unknown data {spec!r}: use synth or synth:N, a benchmark ({', '.join(BENCHMARKS)}), "
            f"or a data file ({', '.join(TABLE_SUFFIXES)})"
        )
    return (list(samples) if limit is None else list(samples)[:limit]), name


def _synth_n(text: str | None) -> int:
    if text is None:
        return DEFAULT_SYNTH_N
    if not text.strip().isdigit() or int(text) <= 0:
        raise UsageError(f"synth:N needs a positive whole number of samples, got {text!r}")
    return int(text)


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).expanduser().is_file()
    except OSError:  # e.g. a name too long for the filesystem: not a file, so not data
        return False
