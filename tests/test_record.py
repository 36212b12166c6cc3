"""The typed Record (data/schema.py): its JSON is records.jsonl's, byte for byte; every record carries
the prompt it answered and the report's sample browser shows that prompt; logs written before
records carried prompts still report, resume and read; a single process is the engine's one rank."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

import vlmstress
from vlmstress import runner
from vlmstress.data import synth
from vlmstress.data.schema import Extraction, Prompt, Record, RenderedPrompt, Sample, Verdict
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.base import Generation
from vlmstress.perturb import VARIANTS, NotApplicable, build_prompt, perturb, register_variant
from vlmstress.report.browser import sample_views
from vlmstress.report.runs import load_runs
from vlmstress.runlog import RECORDS, read_records, run_lock
from vlmstress.runner import RunSpec, error_record, make_record, plan, run_eval, run_in_memory

# records.jsonl's keys before records carried their prompt, in the order they were written
# (design.md, "Outputs of eval"); then the optional ones, where present; `prompt` comes last.
FIELDS = [
    "sample_id", "variant", "target", "misleading", "response", "prefill", "think", "answer", "parsed",
    "correct", "letter_probs", "entropy", "p_correct", "score_source", "judge", "error", "family",
    "difficulty", "n_tokens", "prefill_mode", "think_source", "parse_mode",
]  # fmt: skip
OPTIONAL = ["extraction", "judges", "meta"]


@pytest.fixture(scope="module")
def tiny():
    from vlmstress.models.registry import load_model

    return load_model("tiny")


def some_records() -> tuple[Prompt, list[Record]]:
    """Records of every shape the runner writes: answered (with letter probabilities, backend meta,
    two judges, an extraction), a failed model call, a broken sample and an inapplicable variant."""
    sample = synth.generate(1, seed=2)[0]
    prompt = replace(perturb(sample, "wrong_think", 0), system="Be careful.")
    two = [Verdict("consistent", prompt.misleading, "rule"), Verdict("error", None, "openai:j@u")]
    gen = Generation(
        "It is so.</think><answer>B</answer>",
        letter_probs={"A": 0.1, "B": 0.7, "C": 0.15, "D": 0.05},
        n_tokens=7,
        meta={"think_source": "content", "finish_reason": "stop"},
    )
    unparsed = Generation("</think> I cannot tell.", n_tokens=5)
    open_ended = Sample("open-1", "How many?", answer_text="3", image=sample.image)
    with pytest.raises(NotApplicable):
        perturb(open_ended, "wrong_think", 0)
    return prompt, [
        make_record(sample, prompt, gen, two),
        make_record(sample, prompt, unparsed, two[:1], Extraction("C", "openai:x@u")),
        make_record(sample, prompt, Generation("", error="APITimeoutError: timed out"), []),
        *plan([replace(sample, error="no image"), open_ended], ["wrong_think"], 0, "vlmstress", set())[1],
    ]


def test_a_record_round_trips_through_json_byte_for_byte():
    prompt, records = some_records()
    for record in records:
        line = json.dumps(record.to_json())
        again = Record.from_json(json.loads(line))
        assert json.dumps(again.to_json()) == line
        assert again == record and again.judge == record.judge and again.prompt == record.prompt
        keys = list(record.to_json())
        # Today's keys in today's order, the optional ones only where present, the prompt last.
        assert keys == FIELDS + [k for k in OPTIONAL if getattr(record, k) is not None] + ["prompt"]
        assert list(record) == keys and len(record) == len(keys) and dict(record) == record.to_json()
    answered, extracted, failed, broken, inapplicable = records
    assert answered["judge"] == {"verdict": "consistent", "supports": answered.misleading, "by": "rule"}
    assert answered["judges"][1] == {"verdict": "error", "supports": None, "by": "openai:j@u"}
    assert answered["meta"] == {"finish_reason": "stop"} and "extraction" not in answered
    assert (extracted.answer, extracted.parse_mode) == ("C", "extract")
    assert extracted["extraction"] == {"answer": "C", "by": "openai:x@u", "error": None}
    # What was asked: the user turn, the system turn, the options; the prefill is the record's own.
    for record in (answered, extracted, failed):
        assert record.prompt == RenderedPrompt("Be careful.", prompt.user, prompt.options, 1)
        assert record["prompt"] == {
            "system": "Be careful.",
            "user": prompt.user,
            "options": list(prompt.options),
            "images": 1,
        }
        assert record.prefill == prompt.prefill and record.asked() == replace(prompt, image=None)
    assert failed.error and failed.response is None
    # Nothing was asked of a broken sample or an inapplicable variant: prompt null, in the JSON too.
    assert broken["prompt"] is None and "prompt" in broken and broken.asked() is None
    assert inapplicable.error.startswith("not applicable: ") and inapplicable["prompt"] is None
    # A DataFrame of records has the fields as columns (docs/api.md).
    frame = pd.DataFrame(records)
    assert list(frame.columns)[: len(FIELDS)] == FIELDS
    assert frame["n_tokens"].tolist() == [r.n_tokens for r in records] == [7, 5, 0, 0, 0]
    assert frame["prompt"][0]["system"] == "Be careful."


def test_records_of_older_logs_read_as_they_were_written():
    # A line as the first vlmstress wrote it: no prefill_mode, think_source, parse_mode, difficulty
    # or prompt; those read as None and are not in the record's mapping (nor its JSON).
    old = {
        "sample_id": "synth-test-0-0", "variant": "base", "target": "A", "misleading": None,
        "response": "<think>x</think><answer>A</answer>", "prefill": "", "think": "x", "answer": "A",
        "parsed": True, "correct": True, "letter_probs": {"A": 0.9, "B": 0.1}, "entropy": 0.325,
        "p_correct": 0.9, "score_source": "generation",
        "judge": {"verdict": "consistent", "supports": "A", "by": "rule"}, "error": None,
        "family": "color", "n_tokens": 12,
    }  # fmt: skip
    record = Record.from_json(old)
    assert json.dumps(record.to_json()) == json.dumps(old)
    assert record.parse_mode is None and "parse_mode" not in record and record.get("parse_mode", "-") == "-"
    assert record.prompt is None and "prompt" not in record and record.asked() is None
    assert record == old and record.judge == Verdict("consistent", "A", "rule")
    with pytest.raises(ValueError, match="'color_name'"):
        Record.from_json({**old, "color_name": "red"})  # a field of a newer vlmstress: not dropped


def hint_variant(name: str):
    def hint(sample, misleading, template):
        if misleading is None:
            raise NotApplicable(f"{name} needs a wrong option")
        prompt = build_prompt(sample, name, template, misleading=misleading)
        return replace(prompt, user=f"Hint from {name}: the answer is {misleading}.\n{prompt.user}")

    return hint


def test_records_carry_their_prompt_and_the_browser_shows_it(tiny, tmp_path, registries):
    name = "hint_for_the_browser"
    register_variant(name)(hint_variant(name))
    system = "You answer visual questions carefully."
    out = tmp_path / "run"
    result = vlmstress.evaluate(tiny, synth.generate(3), variants=["base", name], system=system, out=out)
    hinted = [r for r in result.records if r.variant == name]
    assert len(hinted) == 3 and all(isinstance(r, Record) for r in result.records)
    for r in hinted:
        assert r.prompt.user.startswith(f"Hint from {name}: the answer is {r.misleading}.\n")
        assert r.prompt.system == system and r.prompt.images == 1 and len(r.prompt.options) == 4
    assert [r["prompt"] for r in read_records(out / RECORDS)] == [r.prompt.to_json() for r in result.records]

    # The report is built where the variant is not registered (another process, no --include): the
    # prompt cannot be rebuilt, and the browser shows the one the records carry.
    del VARIANTS._entries[name]  # a registry has no public removal; `registries` restores it
    views, _ = sample_views(load_runs([out]), ["base", name])
    shown = {(v.sample_id, a.variant): a for v in views for a in v.attempts}
    for r in hinted:
        attempt = shown[(r.sample_id, name)]
        assert attempt.prompt_extra == [f"Hint from {name}: the answer is {r.misleading}."]
        assert not attempt.prompt_rebuilt and not attempt.prompt_whole
    page = vlmstress.report([out], html=tmp_path / "report.html").read_text()
    assert f"Hint from {name}: the answer is {hinted[0].misleading}." in page
    assert system in page and "prompt rebuilt" not in page


def test_a_log_without_prompts_still_reports_resumes_and_reads(tiny, tmp_path):
    out = tmp_path / "run"
    samples = synth.generate(4)
    first = vlmstress.evaluate(tiny, samples, variants=["base", "wrong_caption"], out=out)
    # The log as a run before records carried their prompt wrote it.
    lines = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    (out / RECORDS).write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "prompt"}) + "\n" for r in lines)
    )

    views, _ = sample_views(load_runs([out]), ["base", "wrong_caption"])
    captions = [a for v in views for a in v.attempts if a.variant == "wrong_caption"]
    assert len(captions) == 4 and all(a.prompt_rebuilt for a in captions)
    recorded = {r.sample_id: r.prompt.user for r in first.records if r.variant == "wrong_caption"}
    for view in views:
        caption = next(a for a in view.attempts if a.variant == "wrong_caption")
        assert caption.prompt_extra == [recorded[view.sample_id].splitlines()[0]]  # rebuilt alike
    page = vlmstress.report([out], html=tmp_path / "report.html").read_text()
    assert page.count("prompt rebuilt: not recorded in this run") == 4
    assert "do not carry their prompt" in page

    # A resume with one more variant adds its records (with prompts) and reads the old ones.
    again = vlmstress.evaluate(tiny, samples, variants=["base", "wrong_caption", "wrong_think"], out=out)
    assert len(again.records) == 12
    old, new = again.records[:8], again.records[8:]
    assert all("prompt" not in r and r.prompt is None for r in old)
    assert all(r.variant == "wrong_think" and r.prompt.user for r in new)
    for variant in ("base", "wrong_caption"):
        assert again.metrics["variants"][variant] == first.metrics["variants"][variant]


class Watched:
    """The tiny model, looking at the run folder at every batch: a single-process run appends to
    records.jsonl itself and never writes a shard."""

    def __init__(self, model, out):
        self.model, self.out, self.name, self.sizes = model, out, model.name, []

    def generate(self, prompts, *, max_new_tokens):
        assert not (self.out / "shards").exists()
        self.sizes.append((self.out / RECORDS).stat().st_size)
        return self.model.generate(prompts, max_new_tokens=max_new_tokens)


def test_a_single_process_run_is_the_engines_one_rank(tiny, tmp_path):
    samples = synth.generate(5)
    samples[2] = replace(samples[2], error="unreadable image")
    spec = RunSpec(model=tiny.name, data="synth:5", variants=["base", "wrong_think"], batch_size=3)
    one, rank = tmp_path / "run_eval", tmp_path / "run_rank"
    watched = Watched(tiny, one)
    metrics = run_eval(watched, samples, spec, one, judges=[RuleJudge()], progress=False)
    assert len(watched.sizes) == 3 and watched.sizes == sorted(set(watched.sizes))  # grows a batch at a time
    with run_lock(rank):
        assert (
            runner.run_rank(tiny, samples, spec, rank, world=1, judges=[RuleJudge()], progress=False)
            == metrics
        )
    for name in (RECORDS, "metrics.json", "summary.md", "config.json", ".records.commit"):
        assert (rank / name).read_bytes() == (one / name).read_bytes(), name
    records, in_memory = run_in_memory(tiny, samples, spec, judges=[RuleJudge()])
    assert "".join(json.dumps(r.to_json()) + "\n" for r in records) == (one / RECORDS).read_text()
    assert in_memory == metrics
    assert [r["error"] for r in read_records(one / RECORDS)][:2] == ["sample: unreadable image"] * 2


def test_error_records_say_what_was_asked():
    sample = synth.generate(1)[0]
    prompt = perturb(sample, "wrong_caption", 0)
    record = error_record(sample, "wrong_caption", "timeout", prompt)
    assert record.prompt == RenderedPrompt.of(prompt) and record.prompt.user.startswith("Caption: ")
    assert error_record(sample, "wrong_caption", "sample: broken").prompt is None


def test_the_report_is_callable_once_its_package_is_loaded(tmp_path, tiny):
    # `vlmstress.report` is both the API's report() and the package the runner imports for
    # summary.md: once that package is loaded the name is the package, which calls report().
    out = tmp_path / "run"
    vlmstress.evaluate(tiny, synth.generate(2), variants=["base"], out=out)
    from vlmstress.report import summary  # noqa: F401

    first = vlmstress.report([out], html=tmp_path / "a.html")
    second = vlmstress.report([out], html=tmp_path / "b.html")
    assert first.read_text() and second.read_text()


def test_a_sample_the_report_cannot_find_shows_what_its_records_asked(tiny, tmp_path):
    # Samples given as objects are not in any file the report can read back: before records carried
    # their prompt the browser showed "(question not available)"; now it shows the asked user turn.
    samples = [replace(s, sample_id=f"mine-{i}") for i, s in enumerate(synth.generate(2))]
    out = tmp_path / "run"
    result = vlmstress.evaluate(tiny, samples, variants=["base", "wrong_caption"], out=out)
    views, _ = sample_views(load_runs([out]), ["base", "wrong_caption"])
    assert [v.sample_id for v in views] == ["mine-0", "mine-1"]
    for view, sample in zip(views, samples, strict=True):
        base = next(r for r in result.records if r.sample_id == sample.sample_id and r.variant == "base")
        assert view.question is None and view.asked == base.prompt.user
        assert view.options == list(zip("ABCD", sample.options, strict=True))
        caption = next(a for a in view.attempts if a.variant == "wrong_caption")
        assert caption.prompt_extra[0].startswith("Caption: ") and not caption.prompt_rebuilt
    page = vlmstress.report([out], html=tmp_path / "report.html").read_text()
    assert "the user turn a record asked" in page and "question not available" not in page


def test_a_recorded_prompt_is_the_prompt_training_rebuilds(tiny):
    # The training dynamics score each evaluation completion against the prompt its record carries
    # (train/dynamics.py); before, they rebuilt it. The two are the same conversation for every variant.
    from vlmstress.perturb import resolve_variants, with_system
    from vlmstress.train.augment import prompt_messages

    samples, system = synth.generate(2, seed=4), "Answer carefully."
    result = vlmstress.evaluate(tiny, samples, variants="all", system=system, max_new_tokens=8)
    assert len(result.records) == 2 * len(resolve_variants("all"))
    by_id = {s.sample_id: s for s in samples}
    for record in result.records:
        rebuilt = with_system(perturb(by_id[record.sample_id], record.variant, 0), system)
        asked = record.asked()
        assert prompt_messages(asked) == prompt_messages(rebuilt)
        assert (asked.target, asked.options, asked.misleading) == (
            rebuilt.target,
            rebuilt.options,
            rebuilt.misleading,
        )
