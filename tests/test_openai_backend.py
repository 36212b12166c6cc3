"""OpenAIChatModel against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py)."""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fake_openai_server import ChatRequest, FakeOpenAIServer, Reply, completion, error_reply, in_turn
from PIL import Image

from vlmstress.errors import UsageError
from vlmstress.models.base import Generation
from vlmstress.models.openai_api import (
    OpenAIChatModel,
    ServerTraits,
    join_reasoning,
    letter_probs_from_logprobs,
)
from vlmstress.perturb import Prompt

OPTIONS = ("red", "blue", "green")


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


def prompt(sample_id: str = "s1", *, prefill: str = "", image=None, user: str = "Which colour?") -> Prompt:
    return Prompt(sample_id, "base", user, image, OPTIONS, "B", prefill=prefill)


def fast_model(server: FakeOpenAIServer, **options) -> OpenAIChatModel:
    """Short timeouts and backoffs so the fault tests stay quick."""
    options = {"timeout": 2.0, "backoff": 0.01, "max_retries": 2, "api_key": "test-key"} | options
    return OpenAIChatModel("fake-vlm", server.base_url, **options)


def run(model: OpenAIChatModel, *prompts: Prompt) -> list[Generation]:
    return model.generate(list(prompts), max_new_tokens=64)


def test_text_image_and_request_shape(server):
    server.respond = lambda req: "<think>It is blue.</think><answer>B</answer>"
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    [gen] = run(fast_model(server), prompt(image=image))
    assert gen.error is None
    assert gen.text == "<think>It is blue.</think><answer>B</answer>"
    assert gen.n_tokens > 0
    [req] = server.requests
    assert req.body["model"] == "fake-vlm"
    assert req.body["max_completion_tokens"] == 64
    assert req.body["temperature"] == 0.0
    assert req.body["logprobs"] is True and req.body["top_logprobs"] == 20
    assert "continue_final_message" not in req.body
    assert [m["role"] for m in req.messages] == ["user"]
    # The image goes first, as a PNG data URL that decodes back to the same pixels.
    parts = req.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (20, 10) and decoded.convert("RGB").getpixel((3, 3)) == (0, 0, 255)
    assert req.user_text == "Which colour?"


def test_text_only_prompt_sends_plain_string_content(server):
    run(fast_model(server), Prompt("s", "judge", "Judge this.", None, (), None, system="Be strict."))
    [req] = server.requests
    assert req.messages == [
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": "Judge this."},
    ]


def test_results_keep_prompt_order_under_concurrency(server):
    # Earlier prompts answer later, so completion order is the reverse of prompt order.
    def respond(req: ChatRequest) -> Reply:
        n = int(req.user_text.split()[-1])
        return Reply(json=completion(f"answer {n}"), delay=0.05 * (5 - n))

    server.respond = respond
    gens = run(fast_model(server), *[prompt(str(i), user=f"question {i}") for i in range(5)])
    assert [g.text for g in gens] == [f"answer {i}" for i in range(5)]


# -- letter probabilities -------------------------------------------------------------------------


def test_letter_probs_from_top_logprobs(server):
    text = "<think>Blue.</think><answer>B</answer>"
    top = {2: {"B": math.log(0.6), "A": math.log(0.2), " B": math.log(0.05), "Z": math.log(0.15)}}
    server.respond = lambda req: Reply(
        json=completion(text, tokens=["<think>Blue.</think>", "<answer>", "B", "</answer>"], top=top)
    )
    [gen] = run(fast_model(server), prompt())
    assert gen.score_source == "generation"
    # " B" counts as B; Z is not an option; C was not offered and gets 0.
    assert gen.letter_probs == pytest.approx({"A": 0.2 / 0.85, "B": 0.65 / 0.85, "C": 0.0})


def test_letter_probs_none_without_logprobs(server):
    server.respond = lambda req: "<answer>B</answer>"  # no logprobs in the reply
    [gen] = run(fast_model(server), prompt())
    assert gen.letter_probs is None and gen.score_source is None


def test_top_logprobs_zero_does_not_ask(server):
    run(fast_model(server, top_logprobs=0), prompt())
    assert "logprobs" not in server.requests[0].body and "top_logprobs" not in server.requests[0].body


def entries(tokens: list[str], top: dict[int, dict[str, float]]) -> list[dict]:
    return completion("".join(tokens), tokens=tokens, top=top)["choices"][0]["logprobs"]["content"]


@pytest.mark.parametrize(
    ("tokens", "index", "prefix"),
    [
        (["<", "answer", ">", "(B", ")", "</answer>"], 3, ""),  # "(B" style token
        (["<answer", ">B", "</answer>"], 1, ""),  # the letter merged with the end of the tag
        ([" The", " answer", " is", " B", "</answer>"], 3, "<think>x</think><answer>"),  # tag in prefill
        (["<think>x</think>", "\n", "B"], 2, ""),  # no tag: a bare letter after the think
    ],
)
def test_answer_letter_token_is_found(tokens, index, prefix):
    letter = tokens[index].strip("()> ")
    other = tokens[index].replace(letter, "A")
    top = {index: {tokens[index]: math.log(0.75), other: math.log(0.25)}}
    probs = letter_probs_from_logprobs(entries(tokens, top), ["A", "B", "C"], prefix)
    assert probs == pytest.approx({"A": 0.25, "B": 0.75, "C": 0.0})


@pytest.mark.parametrize(
    "tokens",
    [
        ["A", " cat", " is", " blue"],  # prose without a tag is no answer, though it starts with "A"
        ["<think>", "B", "</think>", " no answer"],
        ["<answer>", "blue", "</answer>", " B"],  # no letter inside the answer tags
    ],
)
def test_no_answer_letter_gives_none(tokens):
    top = {i: {t: -0.1, "C": -2.0} for i, t in enumerate(tokens)}
    assert letter_probs_from_logprobs(entries(tokens, top), ["A", "B", "C"]) is None


def test_letter_outside_the_options_is_not_an_answer():
    tokens = ["<answer>", "D", "</answer>"]
    assert letter_probs_from_logprobs(entries(tokens, {1: {"D": -0.1}}), ["A", "B", "C"]) is None


# -- prefill --------------------------------------------------------------------------------------


def test_assistant_mode_sends_the_prefill_as_assistant_turn(server):
    server.respond = lambda req: " So B.</think><answer>B</answer>"
    model = fast_model(server, prefill_mode="assistant")
    [gen] = run(model, prompt(prefill="<think>The ball is"))
    assert gen.error is None and gen.text == " So B.</think><answer>B</answer>"
    [req] = server.requests
    assert req.messages[-1] == {"role": "assistant", "content": "<think>The ball is"}
    assert req.body["continue_final_message"] is True and req.body["add_generation_prompt"] is False
    assert model.prefill_mode_used == "assistant" and gen.meta["prefill_mode"] == "assistant"


def test_continue_is_the_old_name_of_assistant(server):
    assert fast_model(server, prefill_mode="continue").prefill_mode == "assistant"


def test_auto_probes_once_and_falls_back_to_user_mode(server):
    server.supports_continue = False
    server.latency = 0.1  # slow enough that unsynchronised probes would overlap
    prefill = "<think>The ball is red.</think>"
    # A model asked to continue often restates the answer so far; that copy is not its own text.
    server.respond = lambda req: prefill + "<answer>A</answer>" if req.user_text.endswith("it.") else "plain"
    model = fast_model(server, max_concurrency=4)
    assert model.prefill_mode_used is None
    gens = run(model, *[prompt(f"s{i}", prefill=prefill) for i in range(6)], prompt("np"))
    assert all(g.error is None for g in gens)
    assert [g.text for g in gens] == ["<answer>A</answer>"] * 6 + ["plain"]
    assert model.prefill_mode_used == "user"
    # Three probes, once: logprobs, continuation (refused), a finished turn; no prompt continues.
    assert sum(req.continues for req in server.probes) == 1 and len(server.probes) == 3
    assert not any(req.continues for req in server.requests)
    user_mode = [req for req in server.requests if "Your answer so far" in req.user_text]
    assert len(user_mode) == 6
    assert all(prefill in req.user_text and req.messages[-1]["role"] == "user" for req in user_mode)
    assert gens[0].meta["prefill_mode"] == "user" and gens[-1].meta["prefill_mode"] is None
    [warning] = model.preflight()
    assert "user mode" in warning and "Unrecognized request argument" in warning


def test_auto_keeps_assistant_mode_when_the_server_continues(server):
    model = fast_model(server)
    run(model, *[prompt(f"s{i}", prefill="<think>") for i in range(3)])
    assert model.prefill_mode_used == "assistant" and model.preflight() == []
    assert all(req.continues for req in server.requests) and len(server.requests) == 3
    # The probe compared the prompt lengths of a continued and a finished turn.
    assert "honoured" in model.traits.notes["prefill_mode"]


def test_a_server_that_accepts_but_ignores_continuation_gets_user_mode(server):
    # It answers 200, and opens a new turn anyway: the prefill would sit in a finished turn.
    server.ignores_continue = True
    model = fast_model(server)
    [gen] = run(model, prompt(prefill="<think>W</think>"))
    assert model.prefill_mode_used == "user" and gen.meta["prefill_mode"] == "user"
    assert "opened a new turn anyway" in model.preflight()[0]
    with pytest.raises(UsageError, match="opened a new turn"):
        fast_model(server, prefill_mode="assistant").preflight()


@pytest.mark.parametrize("refuses_fields", [False, True])
def test_a_server_that_continues_by_itself_gets_assistant_mode(server, refuses_fields):
    # TGI, llama.cpp and Ollama continue a final assistant message without being asked.
    server.continues_by_itself = True
    server.ignores_continue = not refuses_fields
    server.supports_continue = not refuses_fields
    model = fast_model(server)
    [gen] = run(model, prompt(prefill="<think>W</think>"))
    assert model.prefill_mode_used == "assistant" and gen.meta["prefill_mode"] == "assistant"
    assert "by itself" in model.traits.notes["prefill_mode"]
    [req] = server.requests
    assert req.messages[-1] == {"role": "assistant", "content": "<think>W</think>"}
    assert req.continues is not refuses_fields  # the fields are sent only where they are accepted


def test_explicit_assistant_mode_refuses_to_fall_back(server):
    server.supports_continue = False
    with pytest.raises(UsageError, match="prefill_mode=assistant: .* cannot continue"):
        fast_model(server, prefill_mode="assistant").preflight()
    with pytest.raises(UsageError):
        run(fast_model(server, prefill_mode="assistant"), prompt(prefill="<think>"))
    assert server.n_requests == 0


def test_explicit_user_mode_never_sends_continue(server):
    model = fast_model(server, prefill_mode="user")
    run(model, prompt(prefill="<think>"))
    assert not server.requests[0].continues and model.prefill_mode_used == "user"


def test_no_logprobs_is_said_once_before_the_run(server):
    server.logprobs = False
    model = fast_model(server)
    warnings = model.preflight()
    assert any("no letter probabilities" in w and "entropy" in w for w in warnings)
    [gen] = run(model, prompt())
    assert gen.letter_probs is None
    # Not asked again for the prompts: the server showed it does not return them.
    assert "logprobs" not in server.requests[0].body


def test_a_refusal_of_logprobs_is_not_a_failure(server):
    def respond(req):
        if req.body.get("logprobs"):
            return error_reply(400, "logprobs is not supported with this model")
        return "<answer>B</answer>"

    server.respond = respond
    server.logprobs = False
    original = server._reply_to

    def refuse_logprobs_in_probes(req):  # as o-series models do, probes included
        if req.is_probe and req.body.get("logprobs"):
            return error_reply(400, "logprobs is not supported with this model")
        return original(req)

    server._reply_to = refuse_logprobs_in_probes
    model = fast_model(server)
    [gen] = run(model, prompt())
    assert gen.error is None and gen.text == "<answer>B</answer>"
    assert "refused logprobs" in model.preflight()[-1]


# -- reasoning fields -----------------------------------------------------------------------------


def reasoning_reply(content, reasoning, field="reasoning_content"):
    body = completion(content or "")
    body["choices"][0]["message"] = {"role": "assistant", "content": content, field: reasoning}
    return Reply(json=body)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_the_think_a_server_split_off_is_put_back(server, field):
    server.respond = lambda req: reasoning_reply("<answer>B</answer>", "It is blue.", field)
    [gen] = run(fast_model(server), prompt())
    assert gen.text == "<think>It is blue.</think><answer>B</answer>"
    assert gen.meta["think_source"] == field


@pytest.mark.parametrize(
    ("prefill", "content", "reasoning", "text"),
    [
        ("", "<answer>B</answer>", "Blue.", "<think>Blue.</think><answer>B</answer>"),
        ("", None, "Still thinking", "<think>Still thinking"),  # ran out of tokens inside the think
        # No think at all, filed as reasoning because no </think> came (vLLM's R1 / Qwen3 parsers).
        ("", None, "<answer>B</answer>", "<answer>B</answer>"),
        # The prefill's think is open (wrong_think_hedge): the reasoning continues it.
        (
            "<think>It is red but I think",
            "<answer>B</answer>",
            " it is blue.",
            " it is blue.</think><answer>B</answer>",
        ),
        # The prefill closed the think (wrong_think): all-reasoning output is misfiled content.
        ("<think>It is red.</think>", None, "<answer>A</answer>", "<answer>A</answer>"),
        # ... but a second think the model opened itself keeps its tags.
        (
            "<think>It is red.</think>",
            "<answer>B</answer>",
            "No, blue.",
            "<think>No, blue.</think><answer>B</answer>",
        ),
        ("", "<answer>C</answer>", None, "<answer>C</answer>"),
    ],
)
def test_join_reasoning(prefill, content, reasoning, text):
    assert join_reasoning(prefill, content, reasoning) == text


def test_think_source_says_where_the_think_came_from(server):
    server.respond = lambda req: (
        "<answer>A</answer>" if req.continues else "<think>x</think><answer>A</answer>"
    )
    gens = run(
        fast_model(server), prompt("a"), prompt("b", prefill="<think>W</think>"), prompt("c", user="no")
    )
    assert [g.meta["think_source"] for g in gens] == ["content", "prefill", "content"]


# -- forced scoring -------------------------------------------------------------------------------


def test_a_completion_without_an_answer_is_scored_forced(server):
    def respond(req):
        if req.body["max_completion_tokens"] == 1:  # the forced request: prefill + completion + <answer>
            return Reply(
                json=completion("B", tokens=["B"], top={0: {"B": math.log(0.7), "C": math.log(0.3)}})
            )
        return Reply(json=completion("<think>Hmm.</think>", tokens=["<think>Hmm.</think>"]))

    server.respond = respond
    [gen] = run(fast_model(server), prompt())
    assert gen.score_source == "forced"
    assert gen.letter_probs == pytest.approx({"A": 0.0, "B": 0.7, "C": 0.3})
    forced = server.requests[-1]
    assert forced.continues and forced.messages[-1]["content"] == "<think>Hmm.</think><answer>"


def test_no_forced_scoring_where_turns_cannot_be_continued(server):
    server.supports_continue = False
    server.respond = lambda req: Reply(json=completion("<think>Hmm.</think>", tokens=["<think>Hmm.</think>"]))
    [gen] = run(fast_model(server), prompt())
    assert gen.letter_probs is None and len(server.requests) == 1


# -- faults and retries ---------------------------------------------------------------------------


def test_retries_server_errors_then_succeeds(server):
    server.respond = in_turn(error_reply(500, "boom"), error_reply(503, "busy"), then="<answer>C</answer>")
    [gen] = run(fast_model(server), prompt())
    assert gen.error is None and gen.text == "<answer>C</answer>"
    assert len(server.requests) == 3


def test_429_honours_retry_after(server):
    server.respond = in_turn(error_reply(429, "slow down", retry_after="1"))
    start = time.monotonic()
    [gen] = run(fast_model(server, backoff=0.01), prompt())
    assert gen.error is None
    assert time.monotonic() - start >= 0.95  # the header's 1 s, not the 0.01 s backoff
    assert len(server.requests) == 2


def test_a_hang_longer_than_the_timeout_is_retried(server):
    server.respond = in_turn(Reply(json=completion("late"), delay=10), then="on time")
    start = time.monotonic()
    [gen] = run(fast_model(server, timeout=0.3), prompt())
    assert gen.error is None and gen.text == "on time"
    assert time.monotonic() - start < 3


@pytest.mark.parametrize(
    "fault",
    [
        Reply(raw=b'{"id": "x", "choices": [{"mess', content_length=400),  # connection closes early
        Reply(raw=b'{"id": "x", "choices": [{"mess'),  # complete transfer of half a JSON document
        Reply(raw=b"<html>bad gateway</html>"),  # not JSON at all
        Reply(json={"id": "x", "object": "chat.completion"}),  # JSON without choices
    ],
    ids=["truncated-transfer", "truncated-json", "malformed", "no-choices"],
)
def test_broken_bodies_are_retried(server, fault):
    server.respond = in_turn(fault, then="fine")
    [gen] = run(fast_model(server), prompt())
    assert gen.error is None and gen.text == "fine"
    assert len(server.requests) == 2


def test_exhausted_retries_fail_one_prompt_only(server):
    server.respond = lambda req: error_reply(500, "down") if "FAIL" in req.user_text else "ok"
    gens = run(fast_model(server, max_retries=2), prompt("a"), prompt("b", user="FAIL"), prompt("c"))
    assert [g.text for g in gens] == ["ok", "", "ok"]
    assert gens[0].error is None and gens[2].error is None
    assert "HTTP 500" in gens[1].error and "3 attempts" in gens[1].error
    assert sum("FAIL" in r.user_text for r in server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.respond = lambda req: error_reply(404, "The model `fake-vlm` does not exist.")
    [gen] = run(fast_model(server), prompt())
    assert gen.error is not None and "404" in gen.error and "does not exist" in gen.error
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"detail": "Unexpected fields in the request: {'x'}"},
            "Unexpected fields in the request",
        ),  # FastAPI
        ({"detail": [{"loc": ["body", "x"], "msg": "field required"}]}, "field required"),
        (
            {"error": "Input validation error: too long", "error_type": "validation"},
            "Input validation",
        ),  # TGI
        ({"object": "error", "message": "bad image", "type": "BadRequestError"}, "bad image"),  # old vLLM
        (
            [{"error": {"code": 400, "message": 'Unknown name "x"', "status": "INVALID_ARGUMENT"}}],
            "Unknown name",
        ),
    ],
)
def test_the_servers_own_reason_is_kept(server, body, reason):
    server.respond = lambda req: Reply(json=body, status=422)
    [gen] = run(fast_model(server), prompt())
    assert gen.error.startswith("HTTP 422: ") and reason in gen.error


def test_a_dead_server_costs_one_retry_budget_not_one_per_prompt():
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    model = OpenAIChatModel("m", url, max_retries=3, backoff=0.01, max_concurrency=1)
    model.traits = ServerTraits("assistant", True, top_logprobs=20)  # learned before it went down
    gens = run(model, *[prompt(str(i)) for i in range(5)])
    assert "connection error" in gens[0].error and "4 attempts" in gens[0].error
    assert all(g.error.startswith("not sent: the server was unreachable") for g in gens[1:])
    assert all("--retry-failed" in g.error for g in gens)


def test_a_5xx_for_one_prompt_does_not_stop_the_others(server):
    server.respond = lambda req: error_reply(503, "no") if "FAIL" in req.user_text else "ok"
    gens = run(fast_model(server, max_retries=1, max_concurrency=1), prompt("a", user="FAIL"), prompt("b"))
    assert "503" in gens[0].error and gens[1].text == "ok"


def test_the_default_retry_budget_outlasts_a_model_reload():
    model = OpenAIChatModel("m", "http://127.0.0.1:1/v1")
    waits = sum(model.backoff * 2**attempt for attempt in range(model.max_retries))
    assert waits >= 90  # transformers serve / vLLM take 30-60 s to load a model again


def test_unreadable_image_fails_without_a_request(server):
    [gen] = run(fast_model(server), prompt(image=b"definitely not a png"))
    assert gen.error is not None and "image" in gen.error
    assert len(server.requests) == 0


# -- cache ----------------------------------------------------------------------------------------


def test_cache_makes_a_rerun_send_nothing(server, tmp_path):
    tokens = ["<answer>", "B", "</answer>"]
    server.respond = lambda req: Reply(
        json=completion("".join(tokens), tokens=tokens, top={1: {"B": -0.1, "A": -2.5}})
    )
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    prompts = [prompt("a", image=image), prompt("b", prefill="<think>"), prompt("c")]
    first = run(fast_model(server, cache_dir=tmp_path), *prompts)
    assert len(server.requests) == 3
    server.reset()
    second = run(fast_model(server, cache_dir=tmp_path), *prompts)
    assert server.n_requests == 0
    assert [(g.text, g.letter_probs) for g in second] == [(g.text, g.letter_probs) for g in first]
    # A different request (another image) is not served from the cache.
    run(fast_model(server, cache_dir=tmp_path), prompt("a", image=Image.new("RGB", (8, 8), (0, 255, 0))))
    assert server.n_requests == 1


def test_cache_remembers_the_user_fallback(server, tmp_path):
    server.supports_continue = False
    prompts = [prompt(f"s{i}", prefill="<think>") for i in range(3)]
    run(fast_model(server, cache_dir=tmp_path), *prompts)
    server.reset()
    model = fast_model(server, cache_dir=tmp_path)
    gens = run(model, *prompts)
    assert server.n_requests == 0 and model.prefill_mode_used == "user"
    assert all(g.error is None for g in gens)


def test_failures_are_not_cached(server, tmp_path):
    server.respond = lambda req: error_reply(500, "down") if "FAIL" in req.user_text else "ok"
    prompts = [prompt("a"), prompt("b", user="FAIL")]
    run(fast_model(server, cache_dir=tmp_path, max_retries=0), *prompts)
    server.reset()
    server.respond = lambda req: "recovered"
    gens = run(fast_model(server, cache_dir=tmp_path), *prompts)
    assert [g.text for g in gens] == ["ok", "recovered"]
    assert server.n_requests == 1


def test_credentials_a_server_echoes_are_never_written(tmp_path):
    secret = "sk-echo-0123456789abcdef"
    basic = base64.b64encode(b"alice:pw-1234").decode()
    with FakeOpenAIServer() as fake:
        fake.respond = lambda req: f"<answer>B</answer> you sent {req.headers.get('authorization')}"
        url = fake.base_url.replace("http://", "http://alice:pw-1234@")
        model = OpenAIChatModel("m", url, api_key=secret, cache_dir=tmp_path, backoff=0.01, max_retries=0)
        [gen] = run(model, prompt())
        assert "you sent" in gen.text and secret not in gen.text
        fake.respond = lambda req: error_reply(401, f"bad auth {req.headers.get('authorization')} {basic}")
        [failed] = run(OpenAIChatModel("m", url, api_key=secret, max_retries=0), prompt("other"))
    assert "401" in failed.error and secret not in failed.error and basic not in failed.error
    for path in Path(tmp_path).rglob("*.json"):
        text = path.read_text()
        assert secret not in text and basic not in text and "pw-1234" not in text


def test_the_key_is_sent_but_never_written(tmp_path):
    secret = "sk-test-0123456789abcdef"
    with FakeOpenAIServer(api_key=secret) as fake:
        gens = run(
            fast_model(fake, api_key=secret, cache_dir=tmp_path), prompt("a"), prompt("b", prefill="<think>")
        )
        assert all(g.error is None for g in gens)
        assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"
        fake.respond = lambda req: error_reply(401, f"Incorrect API key provided: {secret}")
        [gen] = run(fast_model(fake, api_key=secret), prompt("c"))
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert files
    assert not any(secret in p.read_text() for p in files)
    assert "401" in gen.error and secret not in gen.error
    assert secret not in repr(fast_model(fake, api_key=secret))


def test_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-42")
    with FakeOpenAIServer(api_key="sk-env-key-42") as fake:
        [gen] = run(OpenAIChatModel("m", fake.base_url, max_retries=0), prompt())
    assert gen.error is None
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeOpenAIServer() as fake:
        run(OpenAIChatModel("m", fake.base_url, max_retries=0), prompt())
        assert fake.requests[0].headers["authorization"] == "Bearer EMPTY"


# -- concurrency and naming -----------------------------------------------------------------------


def test_concurrency_is_bounded(server):
    server.respond = lambda req: Reply(json=completion("ok"), delay=0.25)
    gens = run(fast_model(server, max_concurrency=3), *[prompt(str(i)) for i in range(9)])
    assert all(g.text == "ok" for g in gens)
    assert server.max_in_flight == 3  # used in parallel, never beyond the bound


def test_name_hides_credentials_in_the_url():
    model = OpenAIChatModel("gpt-x", "https://user:pw@example.org:8443/v1?api-key=s3cret", max_retries=0)
    assert model.name == "openai:gpt-x@https://example.org:8443/v1"


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="prefill_mode"):
        OpenAIChatModel("m", "http://127.0.0.1:1/v1", prefill_mode="sideways")  # type: ignore[arg-type]


def test_httpx_request_logs_lose_url_credentials(server, caplog):
    caplog.set_level(logging.INFO, logger="httpx")
    caplog.set_level(logging.INFO, logger="httpx2")  # the HTTP client of recent openai releases
    url = server.base_url.replace("http://", "http://alice:s3cret-pw@")
    model = OpenAIChatModel("fake-vlm", url, timeout=2.0, backoff=0.01, max_retries=0, api_key="test-key")
    assert run(model, prompt())[0].error is None
    assert "HTTP Request" in caplog.text and "127.0.0.1" in caplog.text
    assert "s3cret-pw" not in caplog.text and "alice" not in caplog.text


def test_preflight_speaks_of_prefills_only_where_the_run_has_them(server):
    server.supports_continue = False
    model = fast_model(server)
    assert model.preflight(prefilled=False) == []
    assert "user mode" in model.preflight(prefilled=True)[0]


def test_a_server_down_at_the_start_is_said_and_its_prompts_fail():
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    model = OpenAIChatModel("m", url, max_retries=1, backoff=0.01)
    [warning] = model.preflight()
    assert warning.startswith("could not probe") and "connection error" in warning
    gens = run(model, prompt("a"), prompt("b"))
    assert all(g.error and "not sent" in g.error for g in gens)


def test_two_images_are_two_image_parts_in_order(server):
    server.respond = lambda req: "<answer>A</answer>"
    red, blue = Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (4, 6), (0, 0, 255))
    two = Prompt("two", "base", "Which is red?", red, OPTIONS, "A", extra_images=(blue,))
    broken = replace(two, sample_id="broken", extra_images=(b"not an image",))
    ok, bad = run(fast_model(server), two, broken)
    assert ok.error is None and "(image 2 of 2)" in bad.error  # the broken one never left
    [req] = server.requests
    parts = req.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    decoded = [
        Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))) for p in parts[:2]
    ]
    assert [(im.size, im.convert("RGB").getpixel((0, 0))) for im in decoded] == [
        ((6, 4), (255, 0, 0)),
        ((4, 6), (0, 0, 255)),
    ]
