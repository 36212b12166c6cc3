"""Checks of what a command was told, made before it creates anything (docs/design.md: bad usage is
one line on stderr, exit 2, and nothing created).

Each check is cheap and needs no model loaded: a local checkpoint that is not there, a replay file
that cannot be read, a backend that is not installed, an option no backend takes, an output place
nothing can be written to. What only a backend can judge (an option's value) may still fail after
the run folder was made; `leaves_nothing_on_usage_error` then takes back what the command created.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.models.registry import openai_env_options, parse_spec


def check_model(spec: str, options: dict[str, Any]) -> None:
    """A UsageError for a model SPEC (with its --model-opt options) that cannot load, where that
    shows without loading it."""
    kind, target = parse_spec(spec)
    if target is not None and kind in ("tiny", "hf"):
        _check_local_checkpoint(kind, target)
    if kind == "replay":
        from vlmstress.models.replay import index_replay

        if options:
            raise UsageError(f"replay models take no options (got {', '.join(sorted(options))})")
        index_replay(Path(target or ""))  # missing, unreadable, invalid or empty: refused now
    elif kind == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UsageError("vllm: SPECs need vLLM installed: pip install 'vlmstress[vllm]'")
    elif kind == "openai":
        openai_env_options()
    accepted = _option_names(kind)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise UsageError(
            f"{kind} models take no option {', '.join(unknown)} (they take: {', '.join(sorted(accepted))})"
        )


def _check_local_checkpoint(kind: str, target: str) -> None:
    # `tiny:DIR` is always a folder; `hf:` is a folder when it looks like a path (a hub id is
    # ORG/NAME): else transformers takes it for a hub id and answers "Repo id must be in the form".
    local = kind == "tiny" or target.startswith(("/", ".", "~")) or target.count("/") > 1 or "\\" in target
    folder = Path(target).expanduser()
    if local and not folder.is_dir():
        raise UsageError(f"{kind}:{target}: no such directory (a local checkpoint folder must exist)")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UsageError(f"{kind}:{target}: not a checkpoint folder (it has no config.json)")


def _option_names(kind: str) -> set[str] | None:
    """The options a backend's constructor takes by name; None when it takes any (vLLM's engine)."""
    if kind in ("tiny", "hf"):
        from vlmstress.models.hf import HFModel

        names = _keyword_only(HFModel.from_pretrained)
        return None if names is None else names - ({"name"} if kind == "tiny" else set())
    if kind == "openai":
        from vlmstress.models.openai_api import OpenAIChatModel

        return _keyword_only(OpenAIChatModel.__init__)
    if kind == "vllm":
        return None  # engine keywords go through to vLLM, which knows them
    return set()


def _keyword_only(fn: Any) -> set[str] | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


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
