import json
import math
from dataclasses import replace

import pytest

from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.base import Generation
from vlmstress.models.replay import ReplayModel
from vlmstress.perturb import perturb, resolve_variants
from vlmstress.runner import (
    RunSpec,
    check_same_run,
    failed_call,
    read_records,
    run_eval,
    run_in_memory,
    run_lock,
)

VARIANTS = ["base", "wrong_think", "wrong_caption"]


def _replay_file(tmp_path, samples, answer_of):
    """Saved responses: each (sample, variant) answers `answer_of(sample, prompt)` after a think."""
    rows = []
    for s in samples:
        for v in VARIANTS:
            p = perturb(s, v, 0)
            letter = answer_of(s, p)
            think = "" if p.prefill else f"<think>{synth.think_text(s, letter)}</think>"
            probs = {ltr: (0.7 if ltr == letter else 0.1) for ltr in p.option_letters}
            rows.append(
                {
                    "sample_id": s.sample_id,
                    "variant": v,
                    "response": f"{think}<answer>{letter}</answer>",
                    "letter_probs": probs,
                }
            )
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _follows_text(s, p):
    """A model that answers right on base and follows whatever the text argues for."""
    return p.misleading or s.target


def test_records_and_metrics(tmp_path):
    samples = synth.generate(10)
    model = ReplayModel(_replay_file(tmp_path, samples, _follows_text))
    spec = RunSpec(model="replay", data="synth:10", variants=VARIANTS)
    metrics = run_eval(model, samples, spec, tmp_path / "run", judges=[RuleJudge()], progress=False)
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert len(records) == 30
    assert {(r["sample_id"], r["variant"]) for r in records} == {
        (s.sample_id, v) for s in samples for v in VARIANTS
    }
    v = metrics["variants"]
    assert v["base"]["accuracy"] == 1.0
    assert v["wrong_think"]["accuracy"] == 0.0 and v["wrong_think"]["followed_misleading"] == 1.0
    assert v["wrong_caption"]["flip_rate"] == 1.0
    # the think argues for the answer it gives: every base record is judged consistent
    assert v["base"]["quadrants"]["consistent_correct"] == 1.0
    r = next(r for r in records if r["variant"] == "base")
    assert r["entropy"] == pytest.approx(-(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)))
    assert r["p_correct"] == pytest.approx(0.7) and r["score_source"] == "generation"
    for name in ("metrics.json", "config.json", "summary.md"):
        assert (tmp_path / "run" / name).exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_in_memory_run_is_the_logged_run_without_files(tmp_path):
    samples = synth.generate(6)
    replay = _replay_file(tmp_path, samples, _follows_text)
    spec = RunSpec(model="replay", data="synth:6", variants=VARIANTS, batch_size=4)
    metrics = run_eval(
        ReplayModel(replay), samples, spec, tmp_path / "run", judges=[RuleJudge()], progress=False
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))
    records, in_memory = run_in_memory(ReplayModel(replay), samples, spec, judges=[RuleJudge()])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert records == read_records(tmp_path / "run" / "records.jsonl")
    assert in_memory == metrics


def test_config_records_model_options_and_versions_and_a_change_of_options_is_another_run(tmp_path):
    samples = synth.generate(3)
    model = ReplayModel(_replay_file(tmp_path, samples, _follows_text))
    spec = RunSpec(model="replay", data="synth:3", variants=["base"], model_options={"dtype": "float32"})
    run_eval(model, samples, spec, tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_options"] == {"dtype": "float32"}
    assert set(config["versions"]) == {"vlmstress", "torch", "transformers", "trl"}
    assert config["versions"]["vlmstress"] and config["versions"]["torch"]
    check_same_run(tmp_path / "run", spec)  # the same options resume
    for options in ({}, {"dtype": "bfloat16"}, {"dtype": "float32", "device": "cpu"}):
        with pytest.raises(UsageError, match="different model_options"):
            check_same_run(tmp_path / "run", replace(spec, model_options=options))


def test_resume_repeats_no_finished_work(tmp_path):
    samples = synth.generate(10)
    calls = []

    class Counting(ReplayModel):
        def generate(self, prompts, *, max_new_tokens):
            calls.extend((p.sample_id, p.variant) for p in prompts)
            return super().generate(prompts, max_new_tokens=max_new_tokens)

    model = Counting(_replay_file(tmp_path, samples, _follows_text))
    spec = RunSpec(model="replay", data="synth:10", variants=VARIANTS, batch_size=4)
    out = tmp_path / "run"
    run_eval(model, samples[:6], spec, out, progress=False)
    first = list(calls)
    # a crash mid-write leaves a torn last line: it is dropped and redone
    with (out / "records.jsonl").open("a") as f:
        f.write('{"sample_id": "synth-test-0-6", "vari')
    metrics = run_eval(model, samples, spec, out, progress=False)
    second = calls[len(first) :]
    assert len(first) == 18 and len(second) == 12
    assert not set(first) & set(second)
    records = read_records(out / "records.jsonl")
    assert len(records) == 30 and len({(r["sample_id"], r["variant"]) for r in records}) == 30
    fresh = run_eval(model, samples, spec, tmp_path / "fresh", progress=False)
    assert fresh["variants"] == metrics["variants"]


def test_broken_samples_become_error_records(tmp_path):
    samples = synth.generate(4)
    samples[1] = replace(samples[1], error="answer not among the options")
    model = ReplayModel(_replay_file(tmp_path, synth.generate(4), _follows_text))
    spec = RunSpec(model="replay", data="x", variants=["base"])
    metrics = run_eval(model, samples, spec, tmp_path / "run", progress=False)
    records = {r["sample_id"]: r for r in read_records(tmp_path / "run" / "records.jsonl")}
    assert records[samples[1].sample_id]["error"].startswith("sample: answer not among")
    assert records[samples[0].sample_id]["error"] is None
    base = metrics["variants"]["base"]
    assert base["errors"] == 1 and base["n"] == 3


def test_second_process_on_same_dir_is_refused(tmp_path):
    with run_lock(tmp_path), pytest.raises(UsageError, match="another vlmstress process"), run_lock(tmp_path):
        pass


def test_unknown_variant_is_usage_error():
    with pytest.raises(UsageError, match="unknown variant"):
        resolve_variants("base,wrong_thnk")
    assert resolve_variants("all")[0] == "base"


def rounded(value):
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_failed_model_calls_are_kept_on_resume_and_retried_when_asked(tmp_path):
    samples = synth.generate(6)
    samples[5] = replace(samples[5], error="answer not among the options")
    flaky = {(samples[1].sample_id, "base"), (samples[3].sample_id, "wrong_think")}
    calls = []

    class Flaky(ReplayModel):
        """Times out on the first call of each prompt in `flaky`, as a loaded server does."""

        def generate(self, prompts, *, max_new_tokens):
            out = super().generate(prompts, max_new_tokens=max_new_tokens)
            for i, p in enumerate(prompts):
                key = (p.sample_id, p.variant)
                if key in flaky and key not in calls:
                    out[i] = Generation(text="", error="APITimeoutError: Request timed out.")
                calls.append(key)
            return out

    model = Flaky(_replay_file(tmp_path, samples, _follows_text))
    spec = RunSpec(model="replay", data="synth:6", variants=VARIANTS, batch_size=4)
    out, log = tmp_path / "run", tmp_path / "run" / "records.jsonl"
    first = run_eval(model, samples, spec, out, progress=False)
    assert first["variants"]["base"]["errors"] == 2  # one timeout, one broken sample
    assert sum(map(failed_call, read_records(log))) == 2 and len(calls) == 15
    before = log.read_bytes()
    run_eval(model, samples, spec, out, progress=False)  # a plain resume keeps them as they are
    assert log.read_bytes() == before and len(calls) == 15
    metrics = run_eval(model, samples, spec, out, progress=False, retry_failed=True)
    assert set(calls[15:]) == flaky and len(calls) == 17
    records = read_records(log, repair=True)  # the rewritten log's commit describes it
    assert len(records) == 18 and len({(r["sample_id"], r["variant"]) for r in records}) == 18
    assert not any(map(failed_call, records))
    assert [r["error"] for r in records if r["error"]] == ["sample: answer not among the options"] * 3
    assert metrics["variants"]["base"]["errors"] == 1
    clean = run_eval(ReplayModel(model.path), samples, spec, tmp_path / "clean", progress=False)
    # the same records in another order: equal metrics, up to the order of float sums
    assert rounded(metrics["variants"]) == rounded(clean["variants"])
    run_eval(model, samples, spec, out, progress=False, retry_failed=True)  # nothing left to retry
    assert len(calls) == 17


def test_the_runner_holds_a_batch_of_prompts_and_summaries_of_records(tmp_path, monkeypatch):
    # Memory flat in N (reliability.md): the plan keeps no Prompts (each batch's are built when it
    # runs and dropped after), and the metrics are computed from RecordSummary objects read from
    # the log a line at a time, never from the records. Spies, not RSS: benchmarks/memory.py
    # prints the figures.
    import weakref

    import vlmstress.runner as runner
    from vlmstress.metrics import RecordSummary

    samples = synth.generate(10)
    live: set[int] = set()
    real_perturb = runner.perturb

    def counted_perturb(*args, **kwargs):
        prompt = real_perturb(*args, **kwargs)
        live.add(id(prompt))
        weakref.finalize(prompt, live.discard, id(prompt))
        return prompt

    seen: list[int] = []

    class Watching(ReplayModel):
        def generate(self, prompts, *, max_new_tokens):
            seen.append(len(live))
            return super().generate(prompts, max_new_tokens=max_new_tokens)

    kinds: set[type] = set()
    real_metrics = runner.compute_metrics

    def watched_metrics(records, **kwargs):
        records = list(records)
        kinds.update(type(r) for r in records)
        return real_metrics(records, **kwargs)

    monkeypatch.setattr(runner, "perturb", counted_perturb)
    monkeypatch.setattr(runner, "compute_metrics", watched_metrics)
    spec = RunSpec(model="replay", data="synth:10", variants=VARIANTS, batch_size=4)
    model = Watching(_replay_file(tmp_path, samples, _follows_text))
    run_eval(model, samples, spec, tmp_path / "run", judges=[RuleJudge()], progress=False)
    assert len(seen) == 8  # 30 prompts in batches of 4
    assert max(seen) <= spec.batch_size, seen
    assert kinds == {RecordSummary}
