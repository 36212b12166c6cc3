"""Answer extraction (--extract): an LLM reads only what the rules could not parse, over a real HTTP
backend (tests/fake_openai_server.py); its answers are counted, cached and part of the run."""

from __future__ import annotations

import json

import pytest
from fake_openai_server import FakeOpenAIServer, error_reply

import vlmstress
from vlmstress.cli import main
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError
from vlmstress.extract import parse_extraction

OPTIONS = ("red", "blue", "green")
# What the evaluated model wrote, by sample: the extractor's reply depends on the marker in it.
COMPLETIONS = {
    "strict": "<think>It is blue.</think><answer>B</answer>",
    "lenient": "<think>It is blue.</think> The answer is (B).",
    "letter": "<think>Hmm.</think> MARK-LETTER: the second colour, I would say.",
    "none": "<think>Hmm.</think> MARK-NONE: I cannot tell from here.",
    "fail": "<think>Hmm.</think> MARK-FAIL: something vague.",
    "unclosed": "<think>MARK-LETTER it might be the second one",  # no answer stated: not asked
}


def extractor_reply(request):
    text = request.user_text
    if "MARK-LETTER" in text:
        return 'Reading it: {"answer": "B"}'
    if "MARK-NONE" in text:
        return '{"answer": "none"}'
    return error_reply(500, "extractor down")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("VLMSTRESS_OPENAI_RETRIES", "0")  # a failure fails at once
    monkeypatch.setenv("VLMSTRESS_OPENAI_TIMEOUT", "5")
    with FakeOpenAIServer(extractor_reply) as fake:
        yield fake


@pytest.fixture
def replay(tmp_path):
    """The evaluated model: saved completions (no model runs), one sample each."""
    path = tmp_path / "saved.jsonl"
    rows = [{"sample_id": sid, "variant": "base", "response": text} for sid, text in COMPLETIONS.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = [Sample(sid, "Which colour is the cup?", OPTIONS, "B") for sid in COMPLETIONS]
    return f"replay:{path}", samples


def extract_requests(server):
    return [r for r in server.requests if "MARK-" in r.user_text]


def test_unparsed_answers_are_extracted_counted_and_cached(server, replay, tmp_path):
    model, samples = replay
    spec = f"openai:extractor@{server.base_url}"
    out = tmp_path / "run"
    result = vlmstress.evaluate(model, samples, variants=["base"], judges=[], extract=spec, out=out)
    by_id = {r["sample_id"]: r for r in result.records}

    # Asked only about what the rules could not read and that states something after its think.
    asked = sorted(r.user_text.split("MARK-")[1].split(":")[0] for r in extract_requests(server))
    assert asked == ["FAIL", "LETTER", "NONE"]
    assert all(
        "Which colour is the cup?" in r.user_text and "B. blue" in r.user_text for r in server.requests
    )
    assert [by_id[s]["parse_mode"] for s in COMPLETIONS] == ["strict", "lenient", "extract", None, None, None]
    for sid in ("strict", "lenient", "unclosed"):
        assert "extraction" not in by_id[sid]
    letter, none, fail = by_id["letter"], by_id["none"], by_id["fail"]
    assert (letter["answer"], letter["parsed"], letter["correct"]) == ("B", True, True)
    assert letter["extraction"] == {"answer": "B", "by": spec, "error": None}
    assert (none["answer"], none["parsed"], none["extraction"]) == (
        None,
        False,
        {"answer": None, "by": spec, "error": None},
    )
    # A server error is the extraction's error: the answer stays null, never a guess; the record
    # itself is no error (it counts in n, as unparsed).
    assert (fail["answer"], fail["parsed"], fail["correct"], fail["error"]) == (None, False, False, None)
    assert fail["extraction"]["answer"] is None and "500" in fail["extraction"]["error"]

    base = result.metrics["variants"]["base"]
    assert base["n"] == 6 and base["errors"] == 0
    assert base["extract_rate"] == pytest.approx(1 / 6)
    assert base["lenient_rate"] == pytest.approx(1 / 6)
    assert base["unparsed_rate"] == pytest.approx(3 / 6)
    assert "| extracted % |" in (out / "summary.md").read_text()
    assert json.loads((out / "config.json").read_text())["extract"] == spec

    # The cache (the run's cache/) answers a rerun of the same records: only the failed one asks again.
    (out / "records.jsonl").unlink()
    (out / ".records.commit").unlink()
    server.reset()
    again = vlmstress.evaluate(model, samples, variants=["base"], judges=[], extract=spec, out=out)
    assert [r.user_text.split("MARK-")[1][:4] for r in extract_requests(server)] == ["FAIL"]
    assert again.records == result.records

    # Another extractor, or none, is another run.
    for other in (f"openai:other@{server.base_url}", None):
        with pytest.raises(UsageError, match="different extract"):
            vlmstress.evaluate(model, samples, variants=["base"], judges=[], extract=other, out=out)


def test_a_bad_extract_spec_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny", "--data", "synth:2", "--out", str(out), "--extract"]
    for bad in ("nosuch:x", "openai:no-url", "rule"):
        assert main([*args, bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "bad extract SPEC" in err[0], err
    assert main([*args, f"hf:{tmp_path}/missing"]) == 2  # a local checkpoint that is not there
    assert "no such directory" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"answer": "C"}', ("C",)),
        ("```json\n{'answer': '(A)'}\n```", ("A",)),
        ('{"answer": "green"}', ("C",)),  # named by its text
        ('{"answer": "none"}', (None,)),
        ('{"answer": null}', (None,)),
        ('<think>Form {"answer": X}.</think>{"answer": "B"}', ("B",)),
        ("B", None),  # no object: unreadable, not a letter
        ('{"answer": "E"}', None),  # not an option
        ('{"letter": "A"}', None),
        ('{"answer": 2}', None),
    ],
)
def test_parse_extraction(reply, expected):
    assert parse_extraction(reply, OPTIONS) == expected


def test_judges_judge_the_answer_the_extractor_read():
    from vlmstress.extract import Extraction
    from vlmstress.judge.base import Verdict
    from vlmstress.models.base import Generation
    from vlmstress.perturb import perturb
    from vlmstress.runner import judge_batch

    class Seen:
        name = "seen"

        def __init__(self):
            self.items = []

        def judge(self, items):
            self.items.extend(items)
            return [Verdict("unknown", None, self.name)] * len(items)

    judge, prompt = Seen(), perturb(Sample("s", "Which?", OPTIONS, "B"), "base", 0)
    gens = [
        Generation("<think>blue</think> MARK-LETTER"),
        Generation("<think>blue</think><answer>C</answer>"),
    ]
    # An extractor's letter where the rules read none; the rules' letter where they read one.
    judge_batch([judge], [prompt] * 2, gens, ["Which?"] * 2, [Extraction("B", "ext"), None])
    assert [item.answer for item in judge.items] == ["B", "C"]
