"""Model and judge SPECs to objects: the one place that knows every backend by name.

Backends are imported only when asked for, so `openai:` and `replay:` runs never load torch models and
a missing vLLM matters only to `vllm:` SPECs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from vlmstress.errors import UsageError
from vlmstress.judge.base import Judge
from vlmstress.models.base import VLM

MODEL_FORMS = "tiny, tiny:DIR, hf:ID_OR_PATH, vllm:ID_OR_PATH, openai:MODEL@BASE_URL, replay:FILE.jsonl"
_KINDS = ("tiny", "hf", "vllm", "openai", "replay")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(kind, target) of a model SPEC; target is None only for the bare `tiny`."""
    text = spec.strip()
    if text == "tiny":
        return "tiny", None
    kind, sep, target = text.partition(":")
    target = target.strip()
    if not sep or kind not in _KINDS or not target:
        raise UsageError(f"bad model SPEC {redact_spec(spec)!r}: expected one of {MODEL_FORMS}")
    if kind == "openai":
        model, at, url = target.partition("@")
        parts = urlsplit(url.strip())
        if not at or not model.strip() or parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(
                f"bad model SPEC {redact_spec(spec)!r}: openai needs MODEL@BASE_URL with an http(s) URL, "
                f"e.g. openai:gpt-4o@https://api.openai.com/v1 (accepted: {MODEL_FORMS})"
            )
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
    """The backend a SPEC names; `options` go to its constructor as given."""
    kind, target = parse_spec(spec)
    if kind == "tiny":
        from vlmstress.models.tiny import load_tiny

        return _with_options(load_tiny, target, options)
    if kind == "hf":
        from vlmstress.models.hf import HFModel

        return _with_options(HFModel.from_pretrained, target, options)
    if kind == "vllm":
        return _load_vllm(target, **options)
    if kind == "openai":
        from vlmstress.models.openai_api import OpenAIChatModel

        model, _, url = target.partition("@")
        options = {**openai_env_options(), **options}  # options given in code win over the environment
        try:
            return OpenAIChatModel(model.strip(), url.strip(), **options)
        except (TypeError, ValueError) as exc:  # an unknown or out-of-range option
            raise UsageError(f"openai model options: {exc}") from None
    from vlmstress.models.replay import ReplayModel

    if options:
        raise UsageError(f"replay models take no options (got {', '.join(sorted(options))})")
    return ReplayModel(target)


def _with_options(load, target: str | None, options: dict[str, Any]):
    try:
        return load(target, **options)
    except TypeError as exc:  # an option the backend does not take
        raise UsageError(f"model options: {exc}") from None


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


def load_judge(spec: str, **model_options: Any) -> Judge:
    """`rule`, or any model SPEC as an LLM judge (`model_options` go to that model's backend).

    The judge is named by its SPEC without secrets, since the name is written into every record.
    """
    if check_judge_spec(spec) == "rule":
        from vlmstress.judge.rule import RuleJudge

        return RuleJudge()
    from vlmstress.judge.llm import LLMJudge

    return LLMJudge(load_model(spec, **model_options), name=redact_spec(spec))


def check_judge_spec(spec: str) -> str:
    """The judge's kind (`rule` or a model kind), or a UsageError: cheap, so a command line can
    refuse a bad SPEC before it loads anything."""
    if spec.strip() == "rule":
        return "rule"
    try:
        return parse_spec(spec)[0]
    except UsageError:
        raise UsageError(
            f"bad judge SPEC {redact_spec(spec)!r}: expected rule or a model SPEC ({MODEL_FORMS})"
        ) from None


def load_extractor(spec: str, **model_options: Any):
    """Any model SPEC as the answer extractor (extract.LLMExtractor; `model_options` go to that
    model's backend), named by its SPEC without secrets, as it is written into records."""
    from vlmstress.extract import LLMExtractor

    check_extract_spec(spec)
    return LLMExtractor(load_model(spec, **model_options), name=redact_spec(spec))


def check_extract_spec(spec: str) -> str:
    """The extractor's model kind, or a UsageError: cheap, so a bad SPEC is refused before
    anything loads."""
    try:
        return parse_spec(spec)[0]
    except UsageError:
        raise UsageError(
            f"bad extract SPEC {redact_spec(spec)!r}: expected a model SPEC ({MODEL_FORMS})"
        ) from None
