"""ReplayModel: saved responses answer prompts by (sample_id, variant)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmstress.errors import UsageError
from vlmstress.models.base import VLM
from vlmstress.models.replay import MISSING, ReplayModel
from vlmstress.perturb import Prompt


def write(path: Path, *rows) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def prompt(sample_id: str, variant: str = "base") -> Prompt:
    return Prompt(sample_id, variant, "Which?", None, ("x", "y"), "A")


def test_rows_answer_their_prompts(tmp_path):
    path = write(
        tmp_path / "saved.jsonl",
        {
            "sample_id": "s1",
            "variant": "base",
            "response": "<answer>A</answer>",
            "letter_probs": {"A": 0.7, "B": 0.3},
        },
        {"sample_id": "s1", "variant": "wrong_think", "response": "<answer>B</answer>"},
        {"sample_id": 7, "variant": "base", "response": "B"},  # numeric ids become strings
        "",  # blank lines are allowed
    )
    model = ReplayModel(path)
    assert isinstance(model, VLM) and model.name == f"replay:{path}"
    base, wrong, seven, missing = model.generate(
        [prompt("s1"), prompt("s1", "wrong_think"), prompt("7"), prompt("s2")], max_new_tokens=8
    )
    assert (base.text, base.letter_probs, base.score_source, base.error) == (
        "<answer>A</answer>",
        {"A": 0.7, "B": 0.3},
        "generation",
        None,
    )
    assert (wrong.text, wrong.letter_probs, wrong.score_source) == ("<answer>B</answer>", None, None)
    assert seven.text == "B"
    assert missing.error == MISSING and missing.text == ""


def test_records_jsonl_replays_with_its_score_source_and_errors(tmp_path):
    path = write(
        tmp_path / "records.jsonl",
        {
            "sample_id": "a",
            "variant": "base",
            "response": "no tags",
            "letter_probs": {"A": 1.0, "B": 0.0},
            "score_source": "forced",
            "error": None,
        },
        {"sample_id": "b", "variant": "base", "response": "", "error": "HTTP 500 after 5 attempts"},
    )
    a, b = ReplayModel(path).generate([prompt("a"), prompt("b")], max_new_tokens=8)
    assert a.score_source == "forced" and a.error is None
    assert b.error == "HTTP 500 after 5 attempts"


def test_returned_generations_are_copies(tmp_path):
    path = write(
        tmp_path / "r.jsonl",
        {"sample_id": "a", "variant": "base", "response": "A", "letter_probs": {"A": 1.0}},
    )
    model = ReplayModel(path)
    model.generate([prompt("a")], max_new_tokens=1)[0].letter_probs["A"] = 0.0
    assert model.generate([prompt("a")], max_new_tokens=1)[0].letter_probs == {"A": 1.0}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], "not valid JSON"),
        (['["a", "base", "text"]'], "JSON object"),
        ([{"variant": "base", "response": "A"}], "sample_id"),
        ([{"sample_id": "a", "response": "A"}], "variant"),
        ([{"sample_id": "a", "variant": "base"}], "response"),
        ([{"sample_id": "a", "variant": "base", "response": "A"}] * 2, "second row"),
        ([], "no rows"),
    ],
)
def test_bad_files_are_usage_errors(tmp_path, rows, message):
    path = write(tmp_path / "bad.jsonl", *rows)
    with pytest.raises(UsageError, match=message) as info:
        ReplayModel(path)
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        ReplayModel(tmp_path / "nope.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="cannot read"):
        ReplayModel(tmp_path / "binary.jsonl")


BAD_PROBS = [
    {"A": 0.0, "B": 0.0},
    {"A": -0.5, "B": 1.5},
    {"A": float("nan"), "B": 0.5},
    {"A": 1.5},
    ["A"],
    {},
]


def test_bad_letter_probs_are_that_rows_error_and_the_run_goes_on(tmp_path):
    """Issue #19: all-zero letter_probs passed loading and then crashed every run in the metrics
    ("not a probability distribution"); negative or NaN ones refused the whole file. Each is now
    the error of its own record; the other rows answer and the metrics are computed."""
    from vlmstress.data import synth
    from vlmstress.judge.rule import RuleJudge
    from vlmstress.runlog import read_records
    from vlmstress.runner import RunSpec, run_eval

    samples = synth.generate(len(BAD_PROBS) + 1)
    rows = [
        {"sample_id": s.sample_id, "variant": "base", "response": "<answer>A</answer>", "letter_probs": probs}
        for s, probs in zip(samples, [*BAD_PROBS, {"A": 0.6, "B": 0.4}], strict=True)
    ]
    path = write(tmp_path / "saved.jsonl", *rows)  # json.dumps writes NaN, as other tools do
    model = ReplayModel(path)
    gens = model.generate([prompt(s.sample_id) for s in samples], max_new_tokens=1)
    assert all(g.error is not None and "letter_probs" in g.error for g in gens[:-1])
    assert gens[-1].error is None and gens[-1].letter_probs == {"A": 0.6, "B": 0.4}
    out = tmp_path / "run"
    spec = RunSpec(model=f"replay:{path}", data=f"synth:{len(samples)}", variants=["base"])
    metrics = run_eval(model, samples, spec, out, judges=[RuleJudge()], progress=False)
    assert metrics["variants"]["base"]["errors"] == len(BAD_PROBS) and metrics["variants"]["base"]["n"] == 1
    records = read_records(out / "records.jsonl")
    assert sum(r["error"] is not None and "letter_probs" in r["error"] for r in records) == len(BAD_PROBS)
