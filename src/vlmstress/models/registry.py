"""Model and judge SPECs to objects: the registries of backends and judges, by name.

A model SPEC is `KIND:TARGET` (or a bare `KIND`), KIND a registered backend (shipped: tiny, hf,
vllm, openai, replay; users add theirs with `register_backend`). A judge SPEC is a registered judge
(`rule`, or a user's, `register_judge`) or any model SPEC, read as an LLM judge. Backends are
imported only when asked for, so `openai:` and `replay:` runs never load torch models and a missing
vLLM matters only to `vllm:` SPECs.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vlmstress.errors import UsageError
from vlmstress.judge.base import Judge
from vlmstress.models.base import VLM
from vlmstress.registry import Registry, call_error


@dataclass(frozen=True)
class Backend:
    """A registered backend. `load(TARGET, **options)` (for a bare SPEC, `load(**options)`) returns
    a VLM; `check(target)` says why a SPEC's target is malformed (None when it is not), cheaply,
    before anything loads; `preflight(target, options)` raises a UsageError for what the command
    line can refuse before it creates anything (a missing checkpoint, an option the backend does not
    take); `form` is how a SPEC names the backend, for messages."""

    load: Callable[..., VLM]
    check: Callable[[str | None], str | None]
    preflight: Callable[[str | None, dict[str, Any]], None]
    form: str


def _backend_name(name: str) -> str | None:
    if ":" in name:
        return "cannot hold ':' (it ends a SPEC's kind)"
    return "is a judge's name (a judge SPEC would be ambiguous)" if name in JUDGES else None


def _judge_name(name: str) -> str | None:
    if ":" in name:
        return "cannot hold ':' (it ends a SPEC's kind)"
    return "is a backend's name (a judge SPEC would be ambiguous)" if name in BACKENDS else None


BACKENDS: Registry[Backend] = Registry("backend", check_name=_backend_name)
JudgeFactory = Callable[..., Judge]
JUDGES: Registry[JudgeFactory] = Registry("judge", check_name=_judge_name)


def register_backend(
    name: str,
    *,
    form: str | None = None,
    check: Callable[[str | None], str | None] | None = None,
    preflight: Callable[[str | None, dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., VLM]], Callable[..., VLM]]:
    """A decorator: the function or VLM class it decorates loads the model of SPEC `name:TARGET`
    as `load(TARGET, **options)`, and of a bare `name` as `load(**options)` (`--model-opt KEY=VALUE`
    gives the options). Whether a target is taken or needed, and which options, is read from its
    signature, unless `check(target)` (why a target is malformed, or None) and `preflight(target,
    options)` (a UsageError) say. A name already taken is a ValueError."""
    BACKENDS.check_free(name)

    def add(load: Callable[..., VLM]) -> Callable[..., VLM]:
        backend = Backend(
            load,
            check or _target_fits(name, load),
            preflight or _options_fit(name, load),
            form or _form(name, load),
        )
        BACKENDS.add(name, backend, origin=load)
        return load

    return add


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """A decorator: the function or Judge class it decorates makes the judge of SPEC `name` (called
    with no argument) or `name:TARGET` (called with TARGET). A name already taken, by a judge or a
    backend, is a ValueError."""
    return JUDGES.register(name)


def _positional(fn: Callable[..., Any]) -> tuple[int, float]:
    """(required, at most) positional arguments `fn` takes (at most is inf with *args)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0, math.inf
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    most = math.inf if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
    return sum(p.default is p.empty for p in positional), most


def _target_fits(name: str, fn: Callable[..., Any]) -> Callable[[str | None], str | None]:
    def check(target: str | None) -> str | None:
        required, most = _positional(fn)
        if target is None and required:
            return f"{name} needs a target ({name}:TARGET)"
        if target is not None and (most < 1 or required > 1):
            return f"{name} takes no target (a bare {name})"
        return None

    return check


def _options_fit(name: str, fn: Callable[..., Any]) -> Callable[[str | None, dict[str, Any]], None]:
    def preflight(target: str | None, options: dict[str, Any]) -> None:
        why = call_error(fn, *([] if target is None else [target]), **options)
        if why:
            raise UsageError(f"{name} model options: {why}")

    return preflight


def _form(name: str, fn: Callable[..., Any]) -> str:
    required, most = _positional(fn)
    return ", ".join(([name] if not required else []) + ([f"{name}:TARGET"] if most >= 1 else []))


def model_forms() -> str:
    """Every model SPEC form, as the messages list them."""
    return ", ".join(b.form for b in BACKENDS.values())


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(kind, target) of a model SPEC; target is None for a bare SPEC (`tiny`)."""
    return _parse(spec, "model")


def _parse(spec: str, what: str) -> tuple[str, str | None]:
    text = spec.strip()
    kind, sep, target = text.partition(":")
    target = target.strip() if sep else None
    bad = f"bad {what} SPEC {redact_spec(spec)!r}"
    if kind not in BACKENDS:
        raise UsageError(f"{bad}: {BACKENDS.unknown([kind])}; a model SPEC is one of {model_forms()}")
    why = f"nothing after '{kind}:'" if target == "" else BACKENDS[kind].check(target)
    if why:
        raise UsageError(f"{bad}: {why} (accepted: {model_forms()})")
    return kind, target


def redact_spec(spec: str) -> str:
    """The SPEC as it may be shown or recorded: an openai base URL loses user info and query."""
    kind, sep, target = spec.strip().partition(":")
    if kind != "openai" or "@" not in target:
        return spec.strip()
    from vlmstress.models.openai_api import redact_url

    model, _, url = target.partition("@")
    return f"openai:{model}@{redact_url(url.strip())}"


# Words that mark an option holding a credential (api_key, hf_token, headers, ...): such values are
# never written into config.json, whose options are otherwise recorded as the run's identity.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "credentials", "auth", "headers"})


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Backend options as they may be recorded: a credential's value becomes `<redacted>`."""
    return {k: "<redacted>" if _is_secret(k) else v for k, v in options.items()}


def _is_secret(option: str) -> bool:
    return not _SECRET_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", option.lower()))


def load_model(spec: str, **options: Any) -> VLM:
    """The backend a SPEC names; `options` go to its loader as given."""
    kind, target = parse_spec(spec)
    load = BACKENDS[kind].load
    args = () if target is None else (target,)
    why = call_error(load, *args, **options)
    if why:  # an option a user's backend does not take (the shipped ones check their own)
        raise UsageError(f"{kind} model options: {why}")
    model = load(*args, **options)
    if not isinstance(model, VLM):
        raise TypeError(f"backend {kind!r} made a {type(model).__name__}, not a VLM (name and generate)")
    return model


def _with_options(load, target: str | None, options: dict[str, Any]):
    try:
        return load(target, **options)
    except TypeError as exc:  # an option the backend does not take
        raise UsageError(f"model options: {exc}") from None


def _openai_target(target: str | None) -> str | None:
    model, at, url = (target or "").partition("@")
    parts = urlsplit(url.strip())
    if not at or not model.strip() or parts.scheme not in ("http", "https") or not parts.netloc:
        return "openai needs MODEL@BASE_URL with an http(s) URL, e.g. openai:gpt-4o@https://api.openai.com/v1"
    return None


def _local_checkpoint(kind: str, target: str | None) -> None:
    # `tiny:DIR` is always a folder; `hf:` is a folder when it looks like a path (a hub id is
    # ORG/NAME): else transformers takes it for a hub id and answers "Repo id must be in the form".
    if target is None:
        return
    local = kind == "tiny" or target.startswith(("/", ".", "~")) or target.count("/") > 1 or "\\" in target
    folder = Path(target).expanduser()
    if local and not folder.is_dir():
        raise UsageError(f"{kind}:{target}: no such directory (a local checkpoint folder must exist)")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UsageError(f"{kind}:{target}: not a checkpoint folder (it has no config.json)")


def _only_options(kind: str, options: dict[str, Any], accepted: set[str] | None) -> None:
    """`accepted`: the options a backend's constructor takes by name; None when it takes any."""
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise UsageError(
            f"{kind} models take no option {', '.join(unknown)} (they take: {', '.join(sorted(accepted))})"
        )


def _keyword_only(fn: Any) -> set[str] | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def _hf_options(kind: str) -> set[str] | None:
    from vlmstress.models.hf import HFModel

    names = _keyword_only(HFModel.from_pretrained)
    return None if names is None else names - ({"name"} if kind == "tiny" else set())


def _tiny_preflight(target: str | None, options: dict[str, Any]) -> None:
    _local_checkpoint("tiny", target)
    _only_options("tiny", options, _hf_options("tiny"))


def _hf_preflight(target: str | None, options: dict[str, Any]) -> None:
    _local_checkpoint("hf", target)
    _only_options("hf", options, _hf_options("hf"))


def _vllm_preflight(target: str | None, options: dict[str, Any]) -> None:
    # engine keywords go through to vLLM, which knows them
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("vllm: SPECs need vLLM installed: pip install 'vlmstress[vllm]'")


def _openai_preflight(target: str | None, options: dict[str, Any]) -> None:
    from vlmstress.models.openai_api import OpenAIChatModel

    openai_env_options()
    _only_options("openai", options, _keyword_only(OpenAIChatModel.__init__))


def _replay_preflight(target: str | None, options: dict[str, Any]) -> None:
    from vlmstress.models.replay import index_replay

    if options:
        raise UsageError(f"replay models take no options (got {', '.join(sorted(options))})")
    index_replay(Path(target or ""))  # missing, unreadable, invalid or empty: refused now


@register_backend("tiny", form="tiny, tiny:DIR", preflight=_tiny_preflight)
def _tiny(target: str | None = None, **options: Any) -> VLM:
    from vlmstress.models.tiny import load_tiny

    return _with_options(load_tiny, target, options)


@register_backend("hf", form="hf:ID_OR_PATH", preflight=_hf_preflight)
def _hf(target: str, **options: Any) -> VLM:
    from vlmstress.models.hf import HFModel

    return _with_options(HFModel.from_pretrained, target, options)


@register_backend("vllm", form="vllm:ID_OR_PATH", preflight=_vllm_preflight)
def _vllm(target: str, **options: Any) -> VLM:
    return _load_vllm(target, **options)


@register_backend("openai", form="openai:MODEL@BASE_URL", check=_openai_target, preflight=_openai_preflight)
def _openai(target: str, **options: Any) -> VLM:
    from vlmstress.models.openai_api import OpenAIChatModel

    model, _, url = target.partition("@")
    options = {**openai_env_options(), **options}  # options given in code win over the environment
    try:
        return OpenAIChatModel(model.strip(), url.strip(), **options)
    except (TypeError, ValueError) as exc:  # an unknown or out-of-range option
        raise UsageError(f"openai model options: {exc}") from None


@register_backend("replay", form="replay:FILE.jsonl", preflight=_replay_preflight)
def _replay(target: str, **options: Any) -> VLM:
    from vlmstress.models.replay import ReplayModel

    if options:
        raise UsageError(f"replay models take no options (got {', '.join(sorted(options))})")
    return ReplayModel(target)


# Timeouts and retries of `openai:` backends, settable without code (the command line has no flag
# per backend option): e.g. a slow self-hosted server wants a longer timeout, a test a short one.
OPENAI_ENV = {
    "VLMSTRESS_OPENAI_TIMEOUT": ("timeout", float),  # seconds per request
    "VLMSTRESS_OPENAI_RETRIES": ("max_retries", int),  # retries after the first attempt
    "VLMSTRESS_OPENAI_BACKOFF": ("backoff", float),  # first retry pause in seconds, doubled each time
}


def openai_env_options() -> dict[str, Any]:
    """OpenAIChatModel options from VLMSTRESS_OPENAI_* variables; a bad value is a UsageError."""
    options: dict[str, Any] = {}
    for name, (option, kind) in OPENAI_ENV.items():
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            raise UsageError(
                f"{name} must be a non-negative {'whole ' if kind is int else ''}number, got {text!r}"
            )
        options[option] = value
    return options


def _load_vllm(target: str, **options: Any) -> VLM:
    try:
        from vlmstress.models.vllm_engine import VLLMModel
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "vllm":
            raise
        raise UsageError("vllm: SPECs need vLLM installed: pip install 'vlmstress[vllm]'") from None
    return VLLMModel(target, **options)


@register_judge("rule")
def _rule_judge() -> Judge:
    from vlmstress.judge.rule import RuleJudge

    return RuleJudge()


def load_judge(spec: str, **model_options: Any) -> Judge:
    """A registered judge (`rule`, a user's), or any model SPEC as an LLM judge (`model_options` go
    to that model's backend, or to a registered judge's factory).

    An LLM judge is named by its SPEC without secrets, since the name is written into every record.
    """
    kind = check_judge_spec(spec)
    if kind in JUDGES:
        _, sep, target = spec.strip().partition(":")
        make = JUDGES[kind]
        judge = make(target.strip(), **model_options) if sep else make(**model_options)
        if not (isinstance(getattr(judge, "name", None), str) and callable(getattr(judge, "judge", None))):
            raise TypeError(f"judge {kind!r} made a {type(judge).__name__}, not a Judge (name and judge)")
        return judge
    from vlmstress.judge.llm import LLMJudge

    return LLMJudge(load_model(spec, **model_options), name=redact_spec(spec))


def check_judge_spec(spec: str) -> str:
    """The judge's kind (a registered judge, or a model kind), or a UsageError: cheap, so a command
    line can refuse a bad SPEC before it loads anything."""
    name, sep, target = spec.strip().partition(":")
    if name in JUDGES:
        why = _target_fits(name, JUDGES[name])(target.strip() if sep else None)
        if why:
            raise UsageError(f"bad judge SPEC {redact_spec(spec)!r}: {why}")
        return name
    if name not in BACKENDS:
        raise UsageError(
            f"bad judge SPEC {redact_spec(spec)!r}: {JUDGES.unknown([name])}, nor a model SPEC "
            f"({model_forms()})"
        )
    return _parse(spec, "judge")[0]


def load_extractor(spec: str, **model_options: Any):
    """Any model SPEC as the answer extractor (extract.LLMExtractor; `model_options` go to that
    model's backend), named by its SPEC without secrets, as it is written into records."""
    from vlmstress.extract import LLMExtractor

    check_extract_spec(spec)
    return LLMExtractor(load_model(spec, **model_options), name=redact_spec(spec))


def check_extract_spec(spec: str) -> str:
    """The extractor's model kind, or a UsageError: cheap, so a bad SPEC is refused before
    anything loads."""
    return _parse(spec, "extract")[0]
