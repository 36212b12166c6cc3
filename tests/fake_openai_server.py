"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for tests that must not touch the network.

It speaks `POST /v1/chat/completions` with the real response shape (including
`choices[0].logprobs.content[i].top_logprobs`), behaves like vLLM about `continue_final_message` (or
like a server that rejects it, or one that accepts and ignores it), and lets each test script faults:
any status, Retry-After, hangs, truncated or malformed bodies. It counts every request and the most it
ever served at once. The one-token probe requests OpenAIChatModel sends before its first prompt are
answered by the server itself (as vLLM would, or without logprobs when `logprobs` is False) and kept
apart in `probes`, so `requests` holds the prompts a test sends.

It stands in for vLLM, whose shapes (logprobs, continuation) no server that runs on this CPU
produces; tests/test_real_server.py runs the same backend against a real `transformers serve`.

    with FakeOpenAIServer(lambda req: "<answer>B</answer>") as server:
        model = OpenAIChatModel("fake", server.base_url)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vlmstress.models.openai_api import PROBE_USER

DEFAULT_TEXT = "<think>The picture shows it.</think><answer>A</answer>"


@dataclass
class Reply:
    """What the server sends back for one request.

    `raw` replaces the JSON body byte for byte (malformed bodies); `content_length` overrides the
    header, so a value above len(raw) makes a truncated transfer; `delay` hangs before replying (cut
    short when the server stops, so a test never waits for it).
    """

    json: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_length: int | None = None
    delay: float = 0.0


@dataclass
class ChatRequest:
    """One request as received (the body parsed), with helpers for what tests ask most."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def is_probe(self) -> bool:
        """Whether this is one of OpenAIChatModel's one-token probe requests."""
        first = self.messages[0] if self.messages else {}
        return self.body.get("max_completion_tokens") == 1 and first.get("content") == PROBE_USER

    def prompt_tokens(self, continued: bool) -> int:
        """A prompt length as a chat template makes it: each message's words and 4 tokens of turn
        markup, then 3 for the header of the turn the model writes; a continued final message keeps
        its words but loses its own markup, since the model writes on inside it."""
        counts = [len(self.text_of_message(m).split()) + 4 for m in self.messages]
        if continued:
            counts[-1] -= 4
        return sum(counts) + 3

    def text_of_message(self, message: dict[str, Any]) -> str:
        content = message.get("content")
        if isinstance(content, str):
            return content
        return " ".join(p.get("text", "") for p in content or [] if p.get("type") == "text")

    @property
    def continues(self) -> bool:
        """Whether the client asked to continue the final (assistant) message."""
        return bool(self.body.get("continue_final_message"))

    def text_of(self, role: str) -> str:
        """All text of the messages with `role`, parts joined."""
        out = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            else:
                out += [p.get("text", "") for p in content or [] if p.get("type") == "text"]
        return "\n".join(out)

    @property
    def user_text(self) -> str:
        return self.text_of("user")

    @property
    def image_urls(self) -> list[str]:
        return [
            p["image_url"]["url"]
            for m in self.messages
            if isinstance(m.get("content"), list)
            for p in m["content"]
            if p.get("type") == "image_url"
        ]


Responder = Callable[[ChatRequest], "Reply | str"]


def completion(
    text: str,
    *,
    tokens: list[str] | None = None,
    top: dict[int, dict[str, float]] | None = None,
    model: str = "fake-vlm",
) -> dict[str, Any]:
    """A chat.completion body for `text`. With `tokens` (which must join to `text`) it carries
    logprobs: token i gets the alternatives `top[i]` ({token: logprob}), the others only themselves."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
        "logprobs": None,
    }
    n_tokens = max(1, len(text.split()))
    if tokens is not None:
        assert "".join(tokens) == text, "tokens must join to the text"
        top = top or {}
        content = []
        for i, token in enumerate(tokens):
            alternatives = top.get(i, {token: 0.0})
            content.append(
                {
                    "token": token,
                    # A chosen token missing from its own alternatives was sampled from the tail.
                    "logprob": alternatives.get(token, -10.0),
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())}
                        for t, lp in alternatives.items()
                    ],
                }
            )
        choice["logprobs"] = {"content": content}
        n_tokens = len(tokens)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 10, "completion_tokens": n_tokens, "total_tokens": 10 + n_tokens},
    }


def error_reply(status: int, message: str, **headers: str) -> Reply:
    """An error in the OpenAI shape, `{"error": {"message", "type", "code"}}`."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return Reply(json=body, status=status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def in_turn(*replies: Reply | str, then: Reply | str = DEFAULT_TEXT) -> Responder:
    """A responder that answers the first requests with `replies`, in arrival order, then `then`."""
    queue = list(replies)
    lock = threading.Lock()

    def respond(request: ChatRequest) -> Reply | str:
        with lock:
            return queue.pop(0) if queue else then

    return respond


class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer(...) as server:` (or start()/stop()); point clients at
    `server.base_url`. Change `respond` or `supports_continue` at any time; `requests` and
    `max_in_flight` record what arrived."""

    def __init__(
        self,
        respond: Responder | None = None,
        *,
        supports_continue: bool = True,
        ignores_continue: bool = False,
        continues_by_itself: bool = False,
        logprobs: bool = True,
        api_key: str | None = None,
    ) -> None:
        self.respond: Responder = respond or (lambda request: DEFAULT_TEXT)
        self.supports_continue = supports_continue
        self.ignores_continue = ignores_continue  # accepts continue_final_message, then opens a new turn
        # continues a final assistant message with or without the fields, as TGI and llama.cpp do
        self.continues_by_itself = continues_by_itself
        self.logprobs = logprobs  # whether probe replies carry top_logprobs
        self.api_key = api_key  # when set, requests without `Bearer <api_key>` get 401
        self.latency = 0.0  # seconds every reply waits, built-in errors included
        self.requests: list[ChatRequest] = []
        self.probes: list[ChatRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget the requests seen so far (between two runs of one test)."""
        with self._lock:
            self.requests.clear()
            self.probes.clear()
            self.max_in_flight = 0

    def start(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        # Port 0: the OS picks a free port, so parallel test runs never collide.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # hung handlers must not keep stop() waiting
        # A short poll interval: stop() returns within 50 ms instead of the default 0.5 s.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes every hung handler
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called by the handler ------------------------------------------------------------------------

    def _reply_to(self, request: ChatRequest) -> Reply:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided")
        if not isinstance(request.body.get("model"), str) or not isinstance(
            request.body.get("messages"), list
        ):
            return error_reply(400, "model and messages are required")
        if request.continues and not self.ignores_continue:
            if not self.supports_continue:
                return error_reply(400, "Unrecognized request argument supplied: continue_final_message")
            # vLLM's own checks: only an assistant turn can be continued, and not after a new header.
            if request.messages[-1].get("role") != "assistant" or request.body.get(
                "add_generation_prompt", True
            ):
                return error_reply(
                    400,
                    "continue_final_message needs a final assistant message and add_generation_prompt=false",
                )
        if request.is_probe:
            tokens = ["Okay"] if self.logprobs else None
            top = {0: {"Okay": -0.1, "Sure": -2.4}}
            reply: Reply | str = Reply(json=completion("Okay", tokens=tokens, top=top))
        else:
            reply = self.respond(request)
        reply = Reply(json=completion(reply)) if isinstance(reply, str) else reply
        if isinstance(reply.json, dict) and isinstance(reply.json.get("usage"), dict):
            final_is_assistant = bool(request.messages) and request.messages[-1].get("role") == "assistant"
            continued = final_is_assistant and (
                self.continues_by_itself or (request.continues and not self.ignores_continue)
            )
            reply.json["usage"]["prompt_tokens"] = request.prompt_tokens(continued)
        return reply

    def _enter(self, request: ChatRequest) -> None:
        with self._lock:
            (self.probes if request.is_probe else self.requests).append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        state = self.server_state
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(error_reply(404, f"no route {self.path}"))
            return
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self._send(error_reply(400, "request body is not JSON"))
            return
        request = ChatRequest(
            body if isinstance(body, dict) else {}, {k.lower(): v for k, v in self.headers.items()}
        )
        state._enter(request)
        try:
            reply = state._reply_to(request)
            if reply.delay or state.latency:
                state._stopping.wait(reply.delay + state.latency)
        finally:
            # Leave before sending: once the reply is on the wire the client may send its next
            # request before this thread runs again, which would count one request twice.
            state._leave()
        # the client may have given up (its timeout): exactly what a hang test provokes
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload = reply.raw if reply.raw is not None else json.dumps(reply.json).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(reply.content_length or len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        self.close_connection = True
