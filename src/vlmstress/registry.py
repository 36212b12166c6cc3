"""One registry mechanism for everything a user can add by name: variants, templates, backends,
judges, metrics, rewards, augmentation kinds and training sources.

A Registry maps names to objects of one kind. `register(name)` is a decorator that refuses a name
already taken (a ValueError naming who took it: silently replacing an entry would change what every
run naming it measures); `lookup(name)` fails with one line, `unknown <kind> 'x' (known: a, b)`,
a UsageError the command line prints as is. A registry is read-only otherwise (a Mapping).

Configs and SPECs are checked against the registries when they are validated, not when this module
is imported, so names registered by `--include FILE.py` or a `vlmstress.plugins` entry point are
accepted like the shipped ones. This module imports nothing of the project but its errors, so every
module can use it without an import cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from vlmstress.errors import UsageError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names to objects of one `kind` ("variant", "backend", ...), in registration order.

    `check_name` returns why a name cannot be used (it could not be written where it is named:
    a comma in a --variants list, a colon in a SPEC), or None; `hint` ends the unknown-name message
    (e.g. "or module:function").
    """

    # Every registry made, so a test can put them all back as they were (tests/conftest.py).
    instances: ClassVar[list[Registry[Any]]] = []

    def __init__(self, kind: str, *, check_name: Callable[[str], str | None] | None = None, hint: str = ""):
        self.kind = kind
        self.hint = hint
        self._check_name = check_name
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        Registry.instances.append(self)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def add(self, name: str, obj: T, *, origin: object | None = None) -> T:
        """Register `obj` under `name`; returns `obj`. `origin` (default `obj`) is the function or
        class a collision message names."""
        self.check_free(name)
        self._entries[name] = obj
        self._origins[name] = _origin(obj if origin is None else origin)
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: `@REGISTRY.register("name")` adds the function or class it decorates. The
        name is checked at once, so a collision fails where the name is written."""
        self.check_free(name)

        def add(obj: T) -> T:
            return self.add(name, obj)

        return add

    def check_free(self, name: str) -> None:
        """A ValueError when `name` cannot be registered: not a usable name, or already taken."""
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string without spaces")
        why = self._check_name(name) if self._check_name is not None else None
        if why:
            raise ValueError(f"{self.kind} name {name!r} {why}")
        if name in self._entries:
            by = self._origins.get(name)
            raise ValueError(f"{self.kind} {name!r} is already registered" + (f" (by {by})" if by else ""))

    def lookup(self, name: str) -> T:
        """The entry named `name`, or a UsageError listing the known names."""
        if name in self._entries:
            return self._entries[name]
        raise UsageError(self.unknown([name]))

    def require(self, names: Iterable[str]) -> None:
        """A UsageError naming every one of `names` that is not registered."""
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            raise UsageError(self.unknown(unknown))

    def unknown(self, names: Iterable[str]) -> str:
        """The one-line message for names that are not registered."""
        names = list(names)
        known = ", ".join(self._entries) or "none"
        hint = f"; {self.hint}" if self.hint else ""
        plural = "s" if len(names) > 1 else ""
        return f"unknown {self.kind}{plural} {', '.join(map(repr, names))} (known: {known}{hint})"


def _origin(obj: object) -> str:
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if module and name else ""


def call_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    """Why `fn(*args, **kwargs)` would fail to bind ("missing a required argument: 'target'", "got
    an unexpected keyword argument 'x'"), or None: a check of a user's SPEC or config entry against
    the function it names, made before anything is loaded."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: it will say so when called
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None
