"""The report builds on the runs real use leaves behind: a resume with fewer variants, a variant
whose every record is an error, a response that is not valid Unicode, hostile names (issue #19)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmstress.data import synth
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.replay import ReplayModel
from vlmstress.report import build_report
from vlmstress.report.summary import summary_markdown
from vlmstress.runlog import read_records
from vlmstress.runner import RunSpec, run_eval

N = 4
HOSTILE = "<img src=x onerror=alert(1)>"


def replay_file(path: Path, samples, variants, response="<think>t</think><answer>A</answer>") -> Path:
    rows = [{"sample_id": s.sample_id, "variant": v, "response": response} for s in samples for v in variants]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluate(replay: Path, samples, variants, out: Path) -> Path:
    spec = RunSpec(model=f"replay:{replay}", data=f"synth:{N}", variants=variants)
    run_eval(ReplayModel(replay), samples, spec, out, judges=[RuleJudge()], progress=False)
    return out


def test_report_builds_after_a_resume_with_fewer_variants(tmp_path):
    samples = synth.generate(N)
    replay = replay_file(tmp_path / "r.jsonl", samples, ["base", "stop_think"])
    out = evaluate(replay, samples, ["base", "stop_think"], tmp_path / "run")
    evaluate(replay, samples, ["base"], out)  # the resume: metrics.json now lists base only
    assert list(json.loads((out / "metrics.json").read_text())["variants"]) == ["base"]
    assert {r["variant"] for r in read_records(out / "records.jsonl")} == {"base", "stop_think"}
    page = build_report([out]).read_text()
    assert 'data-variant="stop_think"' in page  # its records are still shown in the browser


def test_report_builds_when_a_variant_has_no_successful_record(tmp_path):
    samples = synth.generate(N)
    replay = replay_file(tmp_path / "r.jsonl", samples, ["base"])  # every wrong_think call fails
    out = evaluate(replay, samples, ["base", "wrong_think"], tmp_path / "run")
    m = json.loads((out / "metrics.json").read_text())["variants"]["wrong_think"]
    assert m["n"] == 0 and m["errors"] == N and m["quadrants"]["unknown"] is None
    html = build_report([out])
    md = html.with_suffix(".md").read_text()
    accuracy = md.split("### Accuracy")[1].split("###")[0]
    row = next(line for line in accuracy.splitlines() if line.startswith("| replay"))
    assert row.endswith(" | – |")  # wrong_think's accuracy is null: a dash, never 0


def test_report_builds_on_a_response_with_a_lone_surrogate(tmp_path):
    samples = synth.generate(N)
    replay = replay_file(
        tmp_path / "r.jsonl", samples, ["base"], response="<think>\ud83d</think><answer>A</answer>"
    )
    out = evaluate(replay, samples, ["base"], tmp_path / "run")
    page = build_report([out]).read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    assert "<think>\ufffd</think>" in page.replace("&lt;", "<").replace("&gt;", ">")


def test_summary_escapes_html_from_names():
    metrics = {
        "model": f"replay:/tmp/{HOSTILE}.jsonl",
        "data": f"/tmp/{HOSTILE}|x.jsonl",
        "variants": {f"v{HOSTILE}": {"n": 0, "errors": 1}},
    }
    text = summary_markdown(metrics)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") - line.count("\\|") for line in table}) == 1  # no cell split by a pipe


def test_summary_of_a_file_name_that_is_not_utf8_can_be_written():
    # a replay file named with the byte 0xff: Python reads the name with a lone surrogate in it
    text = summary_markdown({"model": "replay:/tmp/r\udcff.jsonl", "data": "synth:4", "variants": {}})
    assert "replay:/tmp/r\ufffd.jsonl" in text.encode("utf-8").decode("utf-8")


def test_report_builds_on_a_run_named_by_a_file_name_that_is_not_utf8(tmp_path):
    samples = synth.generate(N)
    replay = replay_file(Path(os.fsdecode(bytes(tmp_path) + b"/r\xff.jsonl")), samples, ["base"])
    out = evaluate(replay, samples, ["base"], tmp_path / "run")
    page = build_report([out]).read_bytes().decode("utf-8")
    assert "r\ufffd" in page
