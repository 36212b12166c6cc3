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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from vlmstress.data.schema import Prompt
from vlmstress.models.base import Generation, chat_messages
from vlmstress.parse import think_source

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

PREFILL_MODES: tuple[str, ...] = ("auto", "assistant", "user")
# Earlier releases called the assistant mode `continue`.
_MODE_ALIASES = {"continue": "assistant"}

ANSWER_OPEN = "<answer>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Where servers put the reasoning they split off the content: vLLM since early 2026, Ollama and
# OpenRouter `reasoning`; earlier vLLM, SGLang, transformers serve, llama.cpp, DeepSeek's API
# `reasoning_content`.
REASONING_FIELDS = ("reasoning_content", "reasoning")
# A server asking for a longer pause than this is treated as if it asked for this much: a run should
# slow down under rate limits, not stall for an hour on one header.
MAX_WAIT = 120.0
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


def _data_urls(refs: Sequence[Any]) -> list[str]:
    """png_data_url of every image, in order; the first unreadable one fails the prompt, saying which."""
    if len(refs) <= 1:
        return [png_data_url(ref) for ref in refs]
    urls = []
    for k, ref in enumerate(refs, 1):
        try:
            urls.append(png_data_url(ref))
        except ImageUnreadable as exc:
            raise ImageUnreadable(f"{exc} (image {k} of {len(refs)})") from exc
    return urls


def _openai_messages(prompt: Prompt, mode: str | None, image_urls: Sequence[str]) -> list[dict[str, Any]]:
    """chat_messages in the wire form: image placeholders become data URLs (one image_url part per
    image, in order), text-only turns plain strings (every compatible server accepts those; not all
    accept text parts in system turns)."""
    messages = chat_messages(prompt, with_prefill=mode == "assistant")
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
            urls = iter(image_urls)
            content = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if p["type"] == "image" else p
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


def join_reasoning(prefill: str, content: str | None, reasoning: str | None) -> str:
    """The completion as the model wrote it, from a server that split its think off the content.

    Reasoning parsers (vLLM's, SGLang's, transformers serve's, llama.cpp's) cut the text at
    `</think>`, drop both tags and return the inside as `reasoning`. The paper's parser reads the think
    from the tags, so they are put back, in the place the prefill leaves them:
    - the prefill opens a think it does not close (wrong_think_hedge): the model was still thinking,
      so the reasoning continues the prefill's think and is closed before the content;
    - the prefill already closed its think (wrong_think, stop_think): the model's own think has ended,
      so reasoning with no content is text the parser filed as reasoning because it found no
      `</think>` (vLLM's DeepSeek-R1 and Qwen3 parsers do that), and is kept as it is;
    - otherwise the reasoning was the model's think: `<think>{reasoning}</think>{content}`, except an
      all-reasoning reply that holds an answer tag, which is the same misfiling as above.
    """
    content = content or ""
    if not reasoning:
        return content
    opened, closed = prefill.rfind(THINK_OPEN), prefill.rfind(THINK_CLOSE)
    if opened > closed:  # inside the prefill's think
        return reasoning + (THINK_CLOSE + content if content else "")
    if not content and (closed >= 0 or ANSWER_OPEN in reasoning):
        return reasoning
    return THINK_OPEN + reasoning + (THINK_CLOSE + content if content else "")


def _reasoning_of(message: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the reasoning a server returned beside the content, the field it came in)."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            return value, name
    return None, None


def _has_alternatives(data: Mapping[str, Any]) -> bool:
    """Whether a reply carries per-token alternatives (top_logprobs), what letter_probs are read from."""
    try:
        entries = data["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return False
    return bool(entries) and all(isinstance(e, dict) and e.get("top_logprobs") for e in entries[:1])


@dataclass
class ServerTraits:
    """What a server was found to do, by `OpenAIChatModel.probe`, stated in every run that uses it.

    `prefill_mode` is where a prefill goes: `assistant` (the server really continues the model's own
    turn) or `user` (written into the user message); `letter_probs` whether replies carry the
    top_logprobs that answer-letter distributions are read from; `notes` say why, in the words a
    warning line prints.
    """

    prefill_mode: str
    letter_probs: bool
    continue_flags: bool = True
    top_logprobs: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "prefill_mode": self.prefill_mode,
            "letter_probs": self.letter_probs,
            "continue_flags": self.continue_flags,
            "top_logprobs": self.top_logprobs,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: Any) -> ServerTraits | None:
        if not isinstance(data, dict):
            return None
        mode = _MODE_ALIASES.get(data.get("prefill_mode"), data.get("prefill_mode"))
        if mode not in ("assistant", "user") or not isinstance(data.get("letter_probs"), bool):
            return None
        notes = data.get("notes") if isinstance(data.get("notes"), dict) else {}
        flags = data.get("continue_flags", True) is True
        k = data.get("top_logprobs")
        k = k if isinstance(k, int) and k >= 0 else 0
        return cls(mode, data["letter_probs"], flags, k, {str(k): str(v) for k, v in notes.items()})


# The probe: a text-only exchange of one generated token, cheap on any server.
PROBE_USER = "Reply with one word."
PROBE_PREFILL = "Okay"


class OpenAIChatModel:
    """A model behind `POST {base_url}/chat/completions`.

    Before the first prompt, `probe` learns what the server does with three one-token requests (see
    ServerTraits): whether it returns top_logprobs, and whether it continues an assistant turn
    (vLLM's `continue_final_message` + `add_generation_prompt: false`). A prefill (the text a variant
    puts in the model's mouth) then goes where `prefill_mode` says: `assistant` (the start of the
    model's own turn; refused, as a UsageError, on a server that cannot do it), `user` (written into
    the user turn, which asks the model to go on), or `auto` (assistant where the server continues
    turns, else user, with a warning). Every Generation records its mode and where its think came
    from. `top_logprobs=0` stops asking for logprobs (letter_probs is then None).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 7,
        timeout: float = 60.0,
        backoff: float = 1.0,
        prefill_mode: str = "auto",
        top_logprobs: int = 20,
        cache_dir: str | os.PathLike[str] | None = None,
        temperature: float = 0.0,
    ) -> None:
        prefill_mode = _MODE_ALIASES.get(prefill_mode, prefill_mode)
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
        self._secrets = _secrets_of(key, self.base_url)
        self._probe_lock = threading.Lock()
        self.traits: ServerTraits | None = None
        # Set once a request could not reach the server at all (connection refused or reset on every
        # retry): the prompts after it fail at once, so a dead server costs one retry budget, not one
        # per prompt, and --retry-failed redoes them all once it is back.
        self._unreachable: str | None = None

    def __repr__(self) -> str:  # the default would be harmless, but say plainly there is no key here
        return f"OpenAIChatModel({self.name!r})"

    @property
    def prefill_mode_used(self) -> str | None:
        """Where prefills go in this run, once probed (None before)."""
        return self.traits.prefill_mode if self.traits else None

    def close(self) -> None:
        self._client.close()

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        if not prompts:
            return []
        try:
            self.probe()
        except (RequestRejected, RequestFailed) as exc:  # the server cannot be asked at all
            return [Generation(text="", error=self._scrub(f"probe: {exc}")) for _ in prompts]
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            return list(pool.map(lambda p: self._generate_one(p, max_new_tokens), prompts))

    def preflight(self, *, prefilled: bool = True) -> list[str]:
        """Probe the server before a run, and say what it will cost the run's fidelity: one warning
        line per way this server's answers differ from an in-process model's (`prefilled`: whether
        the run has prompts with a prefill at all). A server that cannot be probed is said too; its
        prompts then become error records, which --retry-failed redoes."""
        try:
            traits = self.probe()
        except (RequestRejected, RequestFailed) as exc:
            where = redact_url(self.base_url)
            return [f"could not probe {where} ({self._scrub(str(exc))}): its prompts will fail"]
        warnings = []
        if traits.prefill_mode == "user" and prefilled:
            warnings.append(
                "prefilled variants (wrong_think, stop_think, ...) run in user mode: the prefill is "
                f"written into the user turn, not the model's own ({traits.notes.get('prefill_mode', '')}); "
                "that is not the paper's setting for open models (--model-opt prefill_mode=assistant "
                "refuses to run instead)"
            )
        if not traits.letter_probs:
            warnings.append(
                f"no letter probabilities from this server ({traits.notes.get('letter_probs', '')}): "
                "entropy, P(correct), AUROC, ECE and Brier are null"
            )
        return warnings

    # -- what the server does ----------------------------------------------------------------------

    def probe(self) -> ServerTraits:
        """The server's traits: remembered in the cache, else learned once (three one-token
        requests, themselves cached), thread-safe. A UsageError when `prefill_mode="assistant"` was
        asked of a server that cannot continue a turn."""
        if self.traits is None:
            with self._probe_lock:
                if self.traits is None:
                    traits = ServerTraits.from_json(self._cache.get(self._traits_key()))
                    if traits is None:
                        traits = self._learn_traits()
                        try:
                            self._cache.put(self._traits_key(), traits.to_json())
                        except OSError as exc:
                            log.warning("could not cache the server's traits: %s", exc)
                    self.traits = self._apply_mode(traits)
        return self.traits

    def _apply_mode(self, traits: ServerTraits) -> ServerTraits:
        """The traits under the mode asked for: `user` is always possible; `assistant` only where the
        server continues turns or its continuation could not be disproved."""
        asked = {**traits.notes, "prefill_mode": "asked for"}
        if self.prefill_mode == "user":
            return replace(traits, prefill_mode="user", notes=asked)
        if self.prefill_mode == "assistant" and traits.prefill_mode == "user":
            if traits.notes.get("continuation") != "unverified":
                from vlmstress.errors import UsageError

                raise UsageError(
                    f"prefill_mode=assistant: {redact_url(self.base_url)} cannot continue an assistant "
                    f"turn ({traits.notes.get('prefill_mode')}); use prefill_mode=auto or user"
                )
            return replace(traits, prefill_mode="assistant", continue_flags=True, notes=asked)
        return traits

    def _learn_traits(self) -> ServerTraits:
        """Three one-token requests: the user turn alone (with logprobs), the user turn and a short
        assistant turn with vLLM's continuation fields, and the same without them. Prompt token
        counts tell what the server did with the assistant turn: a continued turn lacks the end of
        the turn and the next turn's header (several tokens) that a finished one gets."""
        user = {"role": "user", "content": PROBE_USER}
        prefill = {"role": "assistant", "content": PROBE_PREFILL}
        base = {"model": self.model, "max_completion_tokens": 1, "temperature": 0.0}
        notes: dict[str, str] = {}

        # 1. logprobs: servers return them, ignore them (transformers serve), cap how many (TGI: 5
        #    unless launched with --max-top-n-tokens) or refuse them (OpenAI's o-series, with 403).
        asked: dict[str, Any] = {}
        alone = None
        for k in dict.fromkeys(k for k in (self.top_logprobs, min(self.top_logprobs, 5)) if k):
            try:
                alone = self._request({**base, "messages": [user], "logprobs": True, "top_logprobs": k})
            except RequestRejected as exc:
                notes["letter_probs"] = f"it refused logprobs: {exc}"
                continue
            asked = {"logprobs": True, "top_logprobs": k}
            if k != self.top_logprobs:
                notes["top_logprobs"] = f"{k} (it refused {self.top_logprobs})"
            break
        if alone is None:  # refused with logprobs, or not asked: the plain request must pass
            alone = self._request({**base, "messages": [user]})
            notes.setdefault("letter_probs", "top_logprobs=0 was asked")
        letter_probs = bool(asked) and _has_alternatives(alone)
        k = asked.get("top_logprobs", 0) if letter_probs else 0
        if asked and not letter_probs:
            notes["letter_probs"] = "its replies carry no top_logprobs"

        # 2. continuation through vLLM's fields (vLLM, SGLang, recent llama.cpp) ...
        flags = {"continue_final_message": True, "add_generation_prompt": False}
        try:
            continued = self._request({**base, "messages": [user, prefill], **asked, **flags})
        except RequestRejected as exc:  # a 4xx: the plain request above passed, so it is the fields
            continued, refusal = None, f"it refused continue_final_message: {exc}"
        finished = self._request({**base, "messages": [user, prefill], **asked})
        u, a, b = _prompt_tokens(alone), _prompt_tokens(continued), _prompt_tokens(finished)
        if a is not None and b is not None and a < b:
            notes["prefill_mode"] = f"continue_final_message honoured ({a} prompt tokens against {b})"
            return ServerTraits("assistant", letter_probs, True, k, notes)
        # 3. ... or by itself (TGI, llama.cpp, Ollama): the assistant turn added only its own token(s).
        if u is not None and b is not None and b - u <= 2:
            notes["prefill_mode"] = f"it continues a final assistant message by itself ({u} -> {b} tokens)"
            return ServerTraits("assistant", letter_probs, continued is not None, k, notes)
        if continued is None:
            notes["prefill_mode"] = refusal
        elif a is None or b is None or u is None:
            notes["continuation"] = "unverified"
            notes["prefill_mode"] = "it accepted continue_final_message but reports no prompt token counts"
        else:
            notes["prefill_mode"] = (
                f"it accepted continue_final_message but opened a new turn anyway ({a} prompt tokens)"
            )
        return ServerTraits("user", letter_probs, False, k, notes)

    def _traits_key(self) -> str:
        return _request_key(
            self.base_url, {"model": self.model, "probe": "traits", "top_logprobs": self.top_logprobs}
        )

    # -- one prompt ---------------------------------------------------------------------------------

    def _generate_one(self, prompt: Prompt, max_new_tokens: int) -> Generation:
        try:
            image_urls = _data_urls(prompt.images)
            mode = self.prefill_mode_used if prompt.prefill else None
            data = self._request(self._body(prompt, mode, image_urls, max_new_tokens))
            generation = self._to_generation(data, prompt, mode)
            # A reply with logprobs but no answer letter among them: score it forced, where the
            # server can continue the turn (design.md).
            if generation.letter_probs is None and _has_alternatives(data) and self._can_force(mode):
                self._force_score(prompt, generation, image_urls)
            return generation
        except (RequestRejected, RequestFailed) as exc:
            return Generation(text="", error=self._scrub(str(exc)))
        except ImageUnreadable as exc:
            return Generation(text="", error=f"unreadable image: {exc}")
        except Exception as exc:  # the contract: one prompt never sinks the batch
            return Generation(text="", error=f"{type(exc).__name__}: {self._scrub(str(exc))}")

    def _can_force(self, mode: str | None) -> bool:
        """Forced scoring continues prefill + completion + `<answer>` as the model's own turn."""
        return self.traits is not None and self.traits.prefill_mode == "assistant" and mode != "user"

    def _body(
        self,
        prompt: Prompt,
        mode: str | None,
        image_urls: Sequence[str],
        max_new_tokens: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _openai_messages(prompt, mode, image_urls),
            "max_completion_tokens": max_new_tokens,
            "temperature": self.temperature,
        }
        k = self.traits.top_logprobs if self.traits is not None else self.top_logprobs
        if k:
            body |= {"logprobs": True, "top_logprobs": k}
        if mode == "assistant" and (self.traits is None or self.traits.continue_flags):
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return body

    def _force_score(self, prompt: Prompt, generation: Generation, image_urls: Sequence[str]) -> None:
        """The letter distribution after `<answer>` appended to the completion (design.md's forced
        score), by one more request of one token; left None where the reply holds no letter."""
        forced = replace(prompt, prefill=prompt.prefill + generation.text + ANSWER_OPEN)
        data = self._request(self._body(forced, "assistant", image_urls, 1))
        entries = (data["choices"][0].get("logprobs") or {}).get("content") or []
        probs = _distribution(entries[0], prompt.option_letters) if entries else None
        if probs is not None:
            generation.letter_probs, generation.score_source = probs, "forced"

    def _to_generation(self, data: dict[str, Any], prompt: Prompt, mode: str | None) -> Generation:
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
        reasoning, field_name = _reasoning_of(message)
        entries = (data["choices"][0].get("logprobs") or {}).get("content") or []
        if mode == "user" and content.lstrip().startswith(prompt.prefill.strip()):
            # Asked to continue, models often restate the answer so far first; the prefill is not theirs.
            content = content.lstrip()[len(prompt.prefill.strip()) :]
        prefix = prompt.prefill if mode != "user" else ""
        text = join_reasoning(prefix, content, reasoning)
        probs = letter_probs_from_logprobs(entries, prompt.option_letters, prefix)
        usage = data.get("usage") or {}
        generation = Generation(
            text=text,
            letter_probs=probs,
            score_source="generation" if probs is not None else None,
            n_tokens=int(usage.get("completion_tokens") or len(entries)),
        )
        generation.meta["prefill_mode"] = mode
        generation.meta["think_source"] = think_source(content, prompt.prefill, field_name)
        return generation

    # -- the wire -----------------------------------------------------------------------------------

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        key = _request_key(self.base_url, body)
        cached = self._cache.get(key)
        if cached is not None and _looks_like_completion(cached):
            return cached
        data = self._scrub_all(self._send_with_retries(body))
        try:
            self._cache.put(key, data)
        except OSError as exc:  # a full disk costs the cache, not the answer already paid for
            log.warning("could not cache a response: %s", exc)
        return data

    def _send_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._unreachable is not None:
            raise RequestFailed(f"not sent: {self._unreachable}")
        last, down = "no attempt", False
        started = time.monotonic()
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                return self._send(body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status < 500 and status not in _RETRYABLE:
                    raise RequestRejected(status, self._scrub(_status_message(exc))) from None
                # A server that answers, even with 5xx for this prompt, may answer the next one.
                last, down = f"HTTP {status}: {self._scrub(_status_message(exc))}", False
                wait = _retry_after(exc.response.headers)
            except openai.APITimeoutError:
                last, down = "timeout", False  # slow is not down: other prompts may be quicker
            except openai.APIConnectionError as exc:
                last, down = f"connection error ({exc.__cause__ or exc})", True
            except (openai.APIResponseValidationError, ValueError) as exc:
                last, down = f"malformed response ({type(exc).__name__})", False
            if attempt < self.max_retries:
                time.sleep(min(wait if wait is not None else self.backoff * 2**attempt, MAX_WAIT))
        spent = time.monotonic() - started
        failure = (
            f"{self._scrub(last)} after {self.max_retries + 1} attempts in {spent:.0f} s "
            "(more: VLMSTRESS_OPENAI_RETRIES or --model-opt max_retries=N; then rerun with --retry-failed)"
        )
        if down:
            self._unreachable = f"the server was unreachable: {failure}"
        raise RequestFailed(failure)

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
        """Texts from a server end up in records.jsonl, the cache and reports: no credential may."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _scrub_all(self, data: Any) -> Any:
        """`data` (a parsed reply) with every string scrubbed: a server may echo a header back."""
        if isinstance(data, str):
            return self._scrub(data)
        if isinstance(data, list):
            return [self._scrub_all(v) for v in data]
        if isinstance(data, dict):
            return {k: self._scrub_all(v) for k, v in data.items()}
        return data


def _secrets_of(key: str, base_url: str) -> list[str]:
    """What of a key and a URL's user info must never be written: the key, and the password, the
    `user:password` pair and its Basic-auth form (httpx sends URL credentials as that header)."""
    secrets = [] if len(key) < 4 or key == "EMPTY" else [key]
    parts = urlsplit(base_url)
    if parts.password:
        pair = f"{parts.username or ''}:{parts.password}"
        secrets += [base64.b64encode(pair.encode()).decode("ascii"), pair]
        if len(parts.password) >= 4:
            secrets.append(parts.password)
    return secrets


def _prompt_tokens(data: Mapping[str, Any] | None) -> int | None:
    if data is None:
        return None
    value = (data.get("usage") or {}).get("prompt_tokens")
    return value if isinstance(value, int) and value > 0 else None


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
    """The server's own reason, short: OpenAI / vLLM / llama.cpp put it in `error.message` (the client
    hands over that inner object or the whole body), TGI in `error`, FastAPI servers (transformers
    serve) in `detail`, a string or a list of {loc, msg}."""
    body = exc.body
    if isinstance(body, list) and body:  # Gemini's OpenAI endpoint: [{"error": {...}}]
        body = body[0]
    if isinstance(body, str) and body.strip():  # TGI's {"error": "..."}, unwrapped by the client
        return body[:300]
    if isinstance(body, dict):
        inner = body.get("error")
        message = (
            inner.get("message") if isinstance(inner, dict) else inner if isinstance(inner, str) else None
        )
        message = message or body.get("message") or _detail_text(body.get("detail"))
        if message:
            return str(message)[:300]
    return str(exc.message)[:300]


def _detail_text(detail: Any) -> str | None:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        texts = [str(d.get("msg")) if isinstance(d, dict) and d.get("msg") else str(d) for d in detail]
        return "; ".join(texts) or None
    return None
