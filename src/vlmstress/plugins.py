"""User code: what registers variants, templates, backends, judges, metrics, rewards, augmentation
kinds and training sources (the `register_*` functions of `vlmstress`), so they are usable by name.

Two ways in: `--include FILE.py` on every command imports a file before the command runs; and an
installed package declaring an entry point in the `vlmstress.plugins` group (pyproject.toml:
`[project.entry-points."vlmstress.plugins"] NAME = "package.module"`) is imported when the command
line starts, and by `vlmstress.evaluate` / `vlmstress.train_grpo`. Either failing is one line (a
UsageError: exit 2 on the command line), never a traceback."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from vlmstress.errors import UsageError

# Files already imported, by resolved path: a second `main()` in one process (a test, a notebook)
# must not run a file again, or its register_variant calls would collide with their own first run.
_LOADED: dict[Path, ModuleType] = {}

ENTRY_POINT_GROUP = "vlmstress.plugins"
# Entry points already loaded, by value (`package.module`): each is imported once a process, and the
# installed packages are looked up once (a package installed while a process runs is not seen).
_PLUGINS: dict[str, object] = {}
_SCANNED = False


def load_entry_points() -> list[str]:
    """Import every installed plugin (entry points of the `vlmstress.plugins` group), once a
    process; returns their values (`package.module`). One that fails to import is a UsageError naming the
    entry point and its package."""
    global _SCANNED
    if _SCANNED:
        return list(_PLUGINS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _PLUGINS:  # two distributions on the path declaring the same module
            continue
        try:
            _PLUGINS[ep.value] = ep.load()
        except Exception as exc:  # the plugin's own code: a missing module, an error as it runs
            dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            why = " ".join(str(exc).split())
            raise UsageError(
                f"plugin {ep.name} ({ep.value}{dist}, entry point group {ENTRY_POINT_GROUP}) failed to "
                f"load: {type(exc).__name__}: {why}"
            ) from None
    _SCANNED = True
    return list(_PLUGINS)


def include(paths: Iterable[str | Path]) -> list[ModuleType]:
    return [load_file(p) for p in paths]


def load_file(path: str | Path) -> ModuleType:
    """Import the Python file at `path`; a missing file, or one that fails as it runs, is a
    UsageError of one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"--include {path}: no such file")
    if path.suffix != ".py":
        raise UsageError(f"--include {path}: not a Python file (.py)")
    key = path.resolve()
    if key in _LOADED:
        return _LOADED[key]
    # A name of its own, not the file's stem: an included `json.py` must not shadow the real json.
    name = f"vlmstress_include_{hashlib.sha256(str(key).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, key)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses and typing look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"--include {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    _LOADED[key] = module
    return module
