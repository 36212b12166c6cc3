"""LLMJudge over a real HTTP backend (tests/fake_openai_server.py) and over stub models."""

from __future__ import annotations

import json

import pytest
from fake_openai_server import ChatRequest, FakeOpenAIServer, Reply, completion, error_reply

from vlmstress.judge.base import JudgeItem, Verdict
from vlmstress.judge.llm import LLMJudge, judge_prompt, parse_reply
from vlmstress.models.base import Generation
from vlmstress.models.openai_api import OpenAIChatModel

OPTIONS = ("left", "right", "above")


def item(think: str | None = "The cup is left of the plate.", answer: str | None = "A") -> JudgeItem:
    return JudgeItem("Where is the cup?", OPTIONS, think, answer)


def by_think(request: ChatRequest):
    """A judge model whose reply depends on a marker in the reasoning it is shown."""
    text = request.user_text
    if "MARK-CONSISTENT" in text:
        return '```json\n{"supports": "A", "consistent": true}\n```'
    if "MARK-INCONSISTENT" in text:
        return "Sure. {'supports': 'B', 'consistent': False}"
    if "MARK-FAIL" in text:
        return error_reply(500, "judge down")
    return "I think the answer looks fine overall!"  # no verdict in it


@pytest.fixture
def server():
    with FakeOpenAIServer(by_think) as fake:
        yield fake


def http_judge(server: FakeOpenAIServer, **options) -> LLMJudge:
    model = OpenAIChatModel("judge-llm", server.base_url, max_retries=1, backoff=0.01, timeout=2.0, **options)
    return LLMJudge(model, name="openai:judge-llm")


def test_verdicts_over_http(server):
    items = [item("MARK-CONSISTENT"), item("MARK-INCONSISTENT"), item("just prose"), item("MARK-FAIL")]
    verdicts = http_judge(server).judge(items)
    assert verdicts == [
        Verdict("consistent", "A", "openai:judge-llm"),
        Verdict("inconsistent", "B", "openai:judge-llm"),
        Verdict("error", None, "openai:judge-llm"),  # nonsense reply
        Verdict("error", None, "openai:judge-llm"),  # server failure after retries
    ]
    # Text-only requests carrying question, lettered options, the reasoning and the answer.
    req = next(r for r in server.requests if "MARK-CONSISTENT" in r.user_text)
    assert req.image_urls == []
    for text in ("Where is the cup?", "A. left", "B. right", "C. above", "final answer: A (left)"):
        assert text in req.user_text


def test_a_reasoning_judge_is_read_from_its_content_not_its_reasoning(server):
    # A judge served with a reasoning parser (DeepSeek-R1-style) thinks in `reasoning_content`, where a
    # draft verdict may stand; the verdict is the one in its answer.
    def respond(request):
        body = completion('{"supports": "A", "consistent": true}')
        body["choices"][0]["message"]["reasoning_content"] = 'Draft: {"supports": "B", "consistent": false}'
        return Reply(json=body)

    server.respond = respond
    [verdict] = http_judge(server).judge([item()])
    assert verdict == Verdict("consistent", "A", "openai:judge-llm")


def test_items_without_think_or_answer_are_unknown_without_a_call(server):
    verdicts = http_judge(server).judge([item(think=None), item(think="  "), item(answer=None)])
    assert [v.verdict for v in verdicts] == ["unknown"] * 3
    assert server.n_requests == 0


def test_judgements_are_cached_by_the_backend(server, tmp_path):
    items = [item("MARK-CONSISTENT"), item("MARK-INCONSISTENT")]
    first = http_judge(server, cache_dir=tmp_path).judge(items)
    server.reset()
    assert http_judge(server, cache_dir=tmp_path).judge(items) == first
    assert server.n_requests == 0


class StubModel:
    """A VLM that replies from a list and records its calls."""

    name = "stub"

    def __init__(self, replies: list[Generation] | None = None, fail: bool = False) -> None:
        self.replies = replies
        self.fail = fail
        self.calls: list[list] = []

    def generate(self, prompts, *, max_new_tokens):
        self.calls.append(list(prompts))
        if self.fail:
            raise RuntimeError("backend exploded")
        return (
            self.replies
            if self.replies is not None
            else [Generation('{"supports": null, "consistent": true}')] * len(prompts)
        )


def test_one_generate_call_per_batch_in_item_order():
    model = StubModel([Generation('{"supports": "C", "consistent": false}'), Generation("", error="timeout")])
    verdicts = LLMJudge(model, "stub").judge([item(), item(answer=None), item("other")])
    assert len(model.calls) == 1 and len(model.calls[0]) == 2
    assert [p.variant for p in model.calls[0]] == ["judge", "judge"]
    assert all(p.image is None for p in model.calls[0])
    assert verdicts == [
        Verdict("inconsistent", "C", "stub"),
        Verdict("unknown", None, "stub"),
        Verdict("error", None, "stub"),
    ]


@pytest.mark.parametrize(
    "model",
    [StubModel(fail=True), StubModel(replies=[])],  # raises; returns the wrong number of generations
    ids=["raises", "short"],
)
def test_a_failing_backend_gives_errors_never_consistent(model):
    verdicts = LLMJudge(model, "stub").judge([item(), item("x")])
    assert [v.verdict for v in verdicts] == ["error", "error"]


def test_prompt_ids_name_the_content():
    assert judge_prompt(item("a")).sample_id == judge_prompt(item("a")).sample_id
    assert judge_prompt(item("a")).sample_id != judge_prompt(item("b")).sample_id


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"supports": "B", "consistent": true}', ("B", True)),
        ('```json\n{"supports": "A", "consistent": false}\n```', ("A", False)),
        ("{'supports': None, 'consistent': True}", (None, True)),
        (
            '<think>Format {"supports": X, "consistent": ?}. It argues B.</think>'
            '{"supports": "(B)", "consistent": true}',
            ("B", True),
        ),
        ('Verdict: {"supports": "right", "consistent": "false"} done', ("B", False)),
        ('{"supports": "none", "consistent": true}', (None, True)),
        # A model thinking aloud may write a draft verdict first: the last one is its answer.
        (
            'Draft {"supports": "A", "consistent": false}; final {"supports": "B", "consistent": true}',
            ("B", True),
        ),
    ],
)
def test_parse_reply_is_tolerant_of_form(reply, expected):
    assert parse_reply(reply, OPTIONS) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "consistent",
        '{"supports": "A"}',  # no consistency verdict
        '{"supports": "A", "consistent": "maybe"}',
        '{"supports": "E", "consistent": true}',  # not an option
        '{"supports": 1, "consistent": true}',
        json.dumps(["A", True]),
    ],
)
def test_parse_reply_refuses_nonsense(reply):
    assert parse_reply(reply, OPTIONS) is None
