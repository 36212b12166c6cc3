"""Checks of what a command was told, made before it creates anything (docs/design.md: bad usage is
one line on stderr, exit 2, and nothing created).

Each check is cheap and needs no model loaded: a local checkpoint that is not there, a replay file
that cannot be read, a backend that is not installed, an option no backend takes, an output place
nothing can be written to. What only a backend can judge (an option's value) may still fail after
the run folder was made; `leaves_nothing_on_usage_error` then takes back what the command created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.models.registry import BACKENDS, parse_spec


def check_model(spec: str, options: dict[str, Any]) -> None:
    """A UsageError for a model SPEC (with its --model-opt options) that cannot load, where that
    shows without loading it: each backend's own preflight (models/registry.py)."""
    kind, target = parse_spec(spec)
    BACKENDS[kind].preflight(target, options)


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of `path` (itself included) that does not exist, or None."""
    missing = None
    while not path.exists() and not path.is_symlink():
        missing, path = path, path.parent
    return missing


def check_can_create(path: str | os.PathLike[str], what: str) -> None:
    """A UsageError unless `path` is a directory, or one can be made there. Found by making (and
    removing) a probe folder in the nearest existing ancestor: os.access says yes to root even
    where nothing can be made (/sys, a read-only mount)."""
    path = Path(path).expanduser()
    missing = _first_missing(path)
    existing = missing.parent if missing is not None else path
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vlmstress-probe-", dir=existing))
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write in {existing} ({exc.strerror or exc})") from None


@contextmanager
def leaves_nothing_on_usage_error(out: Path) -> Iterator[None]:
    """On a UsageError, remove the folders this block created for `out` (the lock made them), if
    they hold nothing but the lock and empty folders: an option value only the backend could
    check (say dtype=float64) is still bad usage, which creates nothing."""
    created = _first_missing(Path(out))
    try:
        yield
    except UsageError:
        if created is not None and created.is_dir() and _only_locks(created):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _only_locks(folder: Path) -> bool:
    return all(p.is_dir() or p.name == ".lock" for p in folder.rglob("*"))
