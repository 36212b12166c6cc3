"""User code for the command line: `--include FILE.py` imports a file before the command runs, so
the variants and rewards it registers (register_variant, register_reward) are usable by name."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from vlmstress.errors import UsageError

# Files already imported, by resolved path: a second `main()` in one process (a test, a notebook)
# must not run a file again, or its register_variant calls would collide with their own first run.
_LOADED: dict[Path, ModuleType] = {}


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
