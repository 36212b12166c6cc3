"""Any OpenAI-compatible chat server (vLLM, SGLang, OpenAI itself) as a VLM backend.

One request per prompt, sent from a bounded thread pool. What a run pays for is protected three
ways: transient faults are retried with exponential backoff, one prompt that still fails becomes one
error Generation (the batch goes on), and every answered request is kept in a disk cache keyed by the
full request, so a rerun sends nothing twice.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai

from vlmstress.models.base import Generation, chat_messages
from vlmstress.perturb import Prompt

log = logging.getLogger(__name__)


class _RedactURLCredentials(logging.Filter):
    """httpx logs each request's URL at INFO, with any `user:password@` in it. vlmstress never turns
    INFO on, but a program that imports it may: this filter on httpx's logger (and on that of
    httpx2, the fork recent `openai` releases use) cuts the user info out."""

    _USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = self._USERINFO.sub(r"\1", message), None
        return True


for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).addFilter(_RedactURLCredentials())

PrefillMode = Literal["auto", "continue", "user"]
PREFILL_MODES: tuple[str, ...] = ("auto", "continue", "user")

ANSWER_OPEN = "<answer>"
THINK_CLOSE = "</think>"
# A server asking for a longer pause than this is treated as if it asked for this much: a run should
# slow down under rate limits, not stall for an hour on one header.
MAX_WAIT = 120.0
# vLLM refuses an unknown request field with 400, FastAPI-style servers with 422.
_REJECTED = (400, 422)
_RETRYABLE = (408, 409, 429)
_VLLM_EXTRAS = ("continue_final_message", "add_generation_prompt")
# A token that is one option letter, possibly wrapped as "(B", " B)", "**B**" or ">B" (the last when a
# tokenizer merges the end of "<answer>" with the letter).
_LETTER_TOKEN = re.compile(r"^[\s>(\[{*\"']*([A-Z])[\s)\]}.:,*\"']*$")
# The user-mode wording when a server cannot continue an assistant turn.
USER_PREFILL_NOTE = (
    "\n\nYour answer so far:\n{prefill}\n\n"
    "Continue your answer from exactly where it stops, without repeating it."
)


class RequestRejected(Exception):
    """The server refused the request itself (a 4xx other than rate limits): retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RequestFailed(Exception):
    """Transient faults outlasted every retry."""


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: those are where credentials hide in a URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def letter_probs_from_logprobs(
    entries: Sequence[Mapping[str, Any]], letters: Sequence[str], prefix: str = ""
) -> dict[str, float] | None:
    """The distribution over `letters` at the first answer-letter token of a completion.

    `entries` are `choices[0].logprobs.content` (each {token, logprob, top_logprobs}); `prefix` is any
    text the completion continues (the prefill), since `<answer>` may already sit there. The answer
    token is the first option-letter token after `<answer>`; without the tag, only a completion that is
    a bare letter ("B", "(B)") counts. Its top_logprobs alternatives that are option letters are summed
    per letter (" B" and "B" are one answer) and renormalised; letters not offered get 0. None when the
    server sent no alternatives or no answer-letter token exists.
    """
    if not letters or not entries:
        return None
    tokens = [str(e.get("token") or "") for e in entries]
    start = _answer_start(tokens, prefix)
    if start is None:
        return None
    for entry, token in zip(entries[start:], tokens[start:], strict=True):
        match = _LETTER_TOKEN.match(token)
        if match and match.group(1) in letters:
            return _distribution(entry, letters)
        if "<" in token:  # reached </answer> (or other markup) without a letter
            return None
    return None


def _answer_start(tokens: list[str], prefix: str) -> int | None:
    """Index of the first token that may hold the answer letter."""
    if ANSWER_OPEN in prefix:
        return 0
    seen = prefix
    for i, token in enumerate(tokens):
        seen += token
        at = seen.find(ANSWER_OPEN)
        if at >= 0:
            # The token that closes the tag may carry the letter too (">B").
            return i if seen[at + len(ANSWER_OPEN) :].strip() else i + 1
    # No tag: accept only a completion that is nothing but a letter after any think block.
    full = prefix + "".join(tokens)
    _, closed, rest = full.partition(THINK_CLOSE)
    rest = rest if closed else full
    if "<think>" in rest or not _LETTER_TOKEN.match(rest.strip()):
        return None
    if not closed or THINK_CLOSE in prefix:
        return 0
    seen = prefix
    for i, token in enumerate(tokens):
        seen += token
        if THINK_CLOSE in seen:
            return i + 1
    return None


def _distribution(entry: Mapping[str, Any], letters: Sequence[str]) -> dict[str, float] | None:
    alternatives = list(entry.get("top_logprobs") or [])
    if not alternatives:
        return None
    # A sampled token can fall outside the top-k list; it is still one of the candidates.
    if all(a.get("token") != entry.get("token") for a in alternatives):
        alternatives.append({"token": entry.get("token"), "logprob": entry.get("logprob")})
    mass = dict.fromkeys(letters, 0.0)
    for alt in alternatives:
        match = _LETTER_TOKEN.match(str(alt.get("token") or ""))
        logprob = alt.get("logprob")
        if match and match.group(1) in mass and isinstance(logprob, int | float) and math.isfinite(logprob):
            mass[match.group(1)] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {letter: p / total for letter, p in mass.items()}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or HTTP date, or retry-after-ms)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class ImageUnreadable(Exception):
    """The prompt's image could not be decoded: that prompt fails, without a request."""


def png_data_url(ref: Any) -> str:
    """The image as a base64 PNG data URL, the form every OpenAI-compatible server accepts."""
    from vlmstress.data.images import image_to_png_bytes, load_image  # lazy, as every backend does

    try:
        image = load_image(ref)
    except ValueError as exc:  # ImageError: missing, corrupt or oversized
        raise ImageUnreadable(str(exc)) from exc
    return "data:image/png;base64," + base64.b64encode(image_to_png_bytes(image)).decode("ascii")


def _openai_messages(prompt: Prompt, mode: str | None, image_url: str | None) -> list[dict[str, Any]]:
    """chat_messages in the wire form: image placeholders become data URLs, text-only turns plain
    strings (every compatible server accepts those; not all accept text parts in system turns)."""
    messages = chat_messages(prompt, with_prefill=mode == "continue")
    if mode == "user":
        parts = messages[-1]["content"]  # the user turn: chat_messages puts its text part last
        note = USER_PREFILL_NOTE.format(prefill=prompt.prefill)
        parts[-1] = {"type": "text", "text": parts[-1]["text"] + note}
    wire = []
    for message in messages:
        parts = message["content"]
        if all(p["type"] == "text" for p in parts):
            wire.append({"role": message["role"], "content": "".join(p["text"] for p in parts)})
        else:
            content = [
                {"type": "image_url", "image_url": {"url": image_url}} if p["type"] == "image" else p
                for p in parts
            ]
            wire.append({"role": message["role"], "content": content})
    return wire


class _DiskCache:
    """Answered requests as JSON files named by the request hash; a damaged file is a miss."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, data: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file + os.replace: a crash mid-write leaves no half file that a rerun would trust.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class OpenAIChatModel:
    """A model behind `POST {base_url}/chat/completions`.

    Prefill (the assistant turn a variant puts in the model's mouth): `continue` sends it as the last
    assistant message with vLLM's `continue_final_message`; `user` writes it into the user turn and
    asks the model to go on; `auto` tries `continue` once and falls back to `user` for good if the
    server rejects it. `prefill_mode_used` says which one ran. `top_logprobs=0` stops asking for
    logprobs, for servers that refuse them (letter_probs is then None).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff: float = 1.0,
        prefill_mode: PrefillMode = "auto",
        top_logprobs: int = 20,
        cache_dir: str | os.PathLike[str] | None = None,
        temperature: float = 0.0,
    ) -> None:
        if prefill_mode not in PREFILL_MODES:
            raise ValueError(f"prefill_mode must be one of {', '.join(PREFILL_MODES)}, not {prefill_mode!r}")
        if max_concurrency < 1 or max_retries < 0 or top_logprobs < 0:
            raise ValueError("max_concurrency must be >= 1, max_retries and top_logprobs >= 0")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{model}@{redact_url(self.base_url)}"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.prefill_mode = prefill_mode
        self.top_logprobs = top_logprobs
        self.temperature = temperature
        self._cache = _DiskCache(cache_dir)
        # Local servers take any key; the real API needs one from the environment, never from a file.
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # Retries are ours (max_retries=0 here) so backoff, Retry-After and malformed bodies are
        # handled in one place and tests can shorten the waits.
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)
        self._secret = key
        self._probe_lock = threading.Lock()
        self.prefill_mode_used: str | None = None if prefill_mode == "auto" else prefill_mode
        if prefill_mode == "auto":
            self.prefill_mode_used = self._cache_get_mode()

    def __repr__(self) -> str:  # the default would be harmless, but say plainly there is no key here
        return f"OpenAIChatModel({self.name!r})"

    def close(self) -> None:
        self._client.close()

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        if not prompts:
            return []
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            return list(pool.map(lambda p: self._generate_one(p, max_new_tokens), prompts))

    # -- one prompt ---------------------------------------------------------------------------------

    def _generate_one(self, prompt: Prompt, max_new_tokens: int) -> Generation:
        try:
            image_url = png_data_url(prompt.image) if prompt.image is not None else None
            if not prompt.prefill:
                return self._complete(prompt, None, image_url, max_new_tokens)
            if self.prefill_mode_used is None:
                with self._probe_lock:  # one probe per model; the others wait for its outcome
                    if self.prefill_mode_used is None:
                        return self._probe(prompt, image_url, max_new_tokens)
            return self._complete(prompt, self.prefill_mode_used, image_url, max_new_tokens)
        except (RequestRejected, RequestFailed) as exc:
            return Generation(text="", error=self._scrub(str(exc)))
        except ImageUnreadable as exc:
            return Generation(text="", error=f"unreadable image: {exc}")
        except Exception as exc:  # the contract: one prompt never sinks the batch
            return Generation(text="", error=f"{type(exc).__name__}: {self._scrub(str(exc))}")

    def _probe(self, prompt: Prompt, image_url: str | None, max_new_tokens: int) -> Generation:
        try:
            generation = self._complete(prompt, "continue", image_url, max_new_tokens)
        except RequestRejected as exc:
            if exc.status not in _REJECTED:
                raise
            self._resolve_mode("user")
            return self._complete(prompt, "user", image_url, max_new_tokens)
        self._resolve_mode("continue")
        return generation

    def _complete(
        self, prompt: Prompt, mode: str | None, image_url: str | None, max_new_tokens: int
    ) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _openai_messages(prompt, mode, image_url),
            "max_completion_tokens": max_new_tokens,
            "temperature": self.temperature,
        }
        if self.top_logprobs:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        if mode == "continue":
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        data = self._request(body)
        return self._to_generation(data, prompt, mode)

    def _to_generation(self, data: dict[str, Any], prompt: Prompt, mode: str | None) -> Generation:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        entries = (choice.get("logprobs") or {}).get("content") or []
        probs = letter_probs_from_logprobs(entries, prompt.option_letters, prompt.prefill)
        if mode == "user" and text.lstrip().startswith(prompt.prefill.strip()):
            # Asked to continue, models often restate the answer so far first; the prefill is not theirs.
            text = text.lstrip()[len(prompt.prefill.strip()) :]
        usage = data.get("usage") or {}
        generation = Generation(
            text=text,
            letter_probs=probs,
            score_source="generation" if probs is not None else None,
            n_tokens=int(usage.get("completion_tokens") or len(entries)),
        )
        generation.meta["prefill_mode"] = mode
        return generation

    # -- the wire -----------------------------------------------------------------------------------

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        key = _request_key(self.base_url, body)
        cached = self._cache.get(key)
        if cached is not None and _looks_like_completion(cached):
            return cached
        data = self._send_with_retries(body)
        try:
            self._cache.put(key, data)
        except OSError as exc:  # a full disk costs the cache, not the answer already paid for
            log.warning("could not cache a response: %s", exc)
        return data

    def _send_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                return self._send(body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status < 500 and status not in _RETRYABLE:
                    raise RequestRejected(status, self._scrub(_status_message(exc))) from None
                last = f"HTTP {status}"
                wait = _retry_after(exc.response.headers)
            except openai.APITimeoutError:
                last = "timeout"
            except openai.APIConnectionError as exc:
                last = f"connection error ({exc.__cause__ or exc})"
            except (openai.APIResponseValidationError, ValueError) as exc:
                last = f"malformed response ({type(exc).__name__})"
            if attempt < self.max_retries:
                time.sleep(min(wait if wait is not None else self.backoff * 2**attempt, MAX_WAIT))
        raise RequestFailed(f"{self._scrub(last)} after {self.max_retries + 1} attempts")

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        # vLLM's extras are not parameters of the client: they travel in extra_body.
        extra = {k: v for k, v in body.items() if k in _VLLM_EXTRAS}
        standard = {k: v for k, v in body.items() if k not in _VLLM_EXTRAS}
        raw = self._client.chat.completions.with_raw_response.create(**standard, extra_body=extra or None)
        data = json.loads(raw.text)  # raises ValueError on a truncated or malformed body
        if not _looks_like_completion(data):
            raise ValueError("no choices[0].message in the response")
        return data

    def _scrub(self, text: str) -> str:
        """Error texts end up in records.jsonl; make sure the key never does."""
        if len(self._secret) < 4 or self._secret == "EMPTY":
            return text
        return text.replace(self._secret, "***")

    # -- the prefill mode, remembered beside the cache so a rerun does not probe again ---------------

    def _mode_key(self) -> str:
        return _request_key(self.base_url, {"model": self.model, "probe": "continue_final_message"})

    def _cache_get_mode(self) -> str | None:
        data = self._cache.get(self._mode_key())
        mode = data.get("prefill_mode") if data else None
        return mode if mode in ("continue", "user") else None

    def _resolve_mode(self, mode: str) -> None:
        self.prefill_mode_used = mode
        try:
            self._cache.put(self._mode_key(), {"prefill_mode": mode})
        except OSError as exc:
            log.warning("could not cache the prefill mode: %s", exc)


def _request_key(base_url: str, body: Mapping[str, Any]) -> str:
    """SHA-256 of the whole request (image bytes included via their data URLs); the key is not in it."""
    canonical = json.dumps({"base_url": base_url, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _looks_like_completion(data: Any) -> bool:
    try:
        return isinstance(data["choices"][0]["message"], dict)
    except (KeyError, IndexError, TypeError):
        return False


def _status_message(exc: openai.APIStatusError) -> str:
    """The server's own message, short: the client hands over the inner `error` object or the body."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if message:
            return str(message)[:300]
    return str(exc.message)[:300]
