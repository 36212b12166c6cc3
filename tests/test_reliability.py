"""Crash safety, resume, locking, determinism and API faults, end to end (docs/reliability.md).

The crash and lock tests run the real command line in subprocesses and kill them with SIGKILL; the
references they compare against run in this process (torch is imported once, which keeps the suite
fast on a busy machine). Every subprocess runs one torch thread, as conftest.py does here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai_server import ChatRequest, FakeOpenAIServer, Reply, completion, error_reply

from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.models.base import Generation
from vlmstress.runlog import COMMIT, RECORDS, read_records, run_lock
from vlmstress.runner import RunSpec, run_eval

# 24 samples x 3 variants in batches of 2: 36 batches, enough that five killed processes (each
# killed within a few batches of its first write) leave work for the final run.
N, VARIANTS, BATCH = 24, ["base", "wrong_think", "correct_caption"], 2
EVAL = ["--data", f"synth:{N}", "--variants", ",".join(VARIANTS), "--max-new-tokens", "8"]
EVAL += ["--batch-size", str(BATCH), "--seed", "7"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def eval_command(ckpt: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vlmstress.cli",
        "eval",
        "--model",
        f"tiny:{ckpt}",
        *EVAL,
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def reference(tiny_ckpt, tmp_path_factory) -> Path:
    """An uninterrupted run of EVAL: what every interrupted or repeated run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["eval", "--model", f"tiny:{tiny_ckpt}", *EVAL, "--out", str(out)]) == 0
    return out


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------------
# 1. Crash safety


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
    tiny_ckpt, reference, tmp_path, capsys
):
    seed = int(os.environ.get("VLMSTRESS_CRASH_SEED", time.time_ns() % 10**6))
    out, rng = tmp_path / "run", random.Random(seed)
    log = out / RECORDS
    for attempt in range(3):
        before, batches = n_lines(log), 1 + rng.randrange(3)
        with (tmp_path / f"stderr-{attempt}.txt").open("w") as err:
            proc = subprocess.Popen(
                eval_command(tiny_ckpt, out), env=ENV, stdout=subprocess.DEVNULL, stderr=err
            )
            try:
                # Counted in records, not seconds, so a faster machine still leaves work for later.
                grown = lambda: n_lines(log) >= before + batches * BATCH  # noqa: B023, E731
                wait_for(grown, proc, f"{batches} more batches in records.jsonl")
                if attempt == 0:
                    # A live eval holds the directory: a second one is refused at once, in one line.
                    assert main(["eval", "--model", "tiny", "--data", "synth:1", "--out", str(out)]) == 2
                    assert "another vlmstress process" in capsys.readouterr().err
                # Then anywhere in the next batch: generating, appending, committing.
                time.sleep(rng.uniform(0, 0.03))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, (
            f"finished before it was killed (VLMSTRESS_CRASH_SEED={seed})"
        )
    survived = read_records(log)
    assert 0 < len(survived) < N * len(VARIANTS), (
        f"no work left for the final run (VLMSTRESS_CRASH_SEED={seed})"
    )

    assert main(["eval", "--model", f"tiny:{tiny_ckpt}", *EVAL, "--out", str(out)]) == 0
    data = log.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"", "the log ends in a whole line"
    records = [json.loads(line) for line in lines[:-1]]  # no torn line anywhere
    keys = [(r["sample_id"], r["variant"]) for r in records]
    assert len(keys) == N * len(VARIANTS) == len(set(keys)), f"VLMSTRESS_CRASH_SEED={seed}"
    # The resumed batches are the batches of an uninterrupted run, so even the floats agree.
    assert data == (reference / RECORDS).read_bytes(), f"VLMSTRESS_CRASH_SEED={seed}"
    assert not list(out.glob(".*.tmp*")), "a killed write_atomic left debris"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )


class BatchSensitive:
    """A model whose output depends on which prompts share its batch, as real ones do through
    padding; a resume that regroups prompts changes its records."""

    name = "batch-sensitive"

    def __init__(self, fail_at_batch: int | None = None) -> None:
        self.fail_at_batch, self.batches = fail_at_batch, 0

    def generate(self, prompts, *, max_new_tokens):
        if self.batches == self.fail_at_batch:
            raise KeyboardInterrupt  # the process dies here
        self.batches += 1
        group = "+".join(p.sample_id[-2:] for p in prompts)
        return [Generation(f"<think>batch {group}</think><answer>A</answer>") for _ in prompts]


def test_a_partly_written_batch_is_redone_whole(tmp_path):
    samples = synth.generate(7)
    spec = RunSpec(model="batch-sensitive", data="synth:7", variants=["base"], batch_size=3)
    run_eval(BatchSensitive(), samples, spec, tmp_path / "ref", progress=False)
    ref_lines = (tmp_path / "ref" / RECORDS).read_bytes().splitlines(keepends=True)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_eval(BatchSensitive(fail_at_batch=1), samples, spec, out, progress=False)
    assert len(read_records(out / RECORDS)) == 3
    # What SIGKILL in the middle of appending batch 2 leaves: one whole line of it and half another.
    with (out / RECORDS).open("ab") as f:
        f.write(ref_lines[3] + ref_lines[4][:25])
    run_eval(BatchSensitive(), samples, spec, out, progress=False)
    assert (out / RECORDS).read_bytes() == b"".join(ref_lines)
    assert json.loads((out / COMMIT).read_text()) == {"bytes": sum(map(len, ref_lines)), "lines": 7}


def test_resume_refuses_a_log_of_a_different_run(tiny_ckpt, tmp_path, capsys):
    def run(variants: str, *extra: str) -> int:
        return main(
            ["eval", "--model", f"tiny:{tiny_ckpt}", "--data", "synth:2", "--variants", variants]
            + ["--max-new-tokens", "4", "--out", str(tmp_path), *extra]
        )

    assert run("base") == 0
    before = (tmp_path / RECORDS).read_bytes()
    capsys.readouterr()
    # Another seed draws other misleading letters: resuming would mix two runs in one log.
    assert run("base", "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different seed" in err, err
    assert (tmp_path / RECORDS).read_bytes() == before
    # More variants on the same run is a resume, not a different run.
    assert run("base,stop_think") == 0
    assert len(read_records(tmp_path / RECORDS)) == 4
    # Fewer is a resume too, and the metrics describe the command that ran, not the whole log.
    assert run("base") == 0
    assert list(json.loads((tmp_path / "metrics.json").read_text())["variants"]) == ["base"]


def test_a_damaged_log_is_one_line_exit_1_and_left_as_it_is(tiny_ckpt, tmp_path, capsys):
    args = ["eval", "--model", f"tiny:{tiny_ckpt}", "--data", "synth:2", "--variants", "base"]
    args += ["--max-new-tokens", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    # Not a torn write (those only ever cut the last line): something else damaged the file.
    damaged = (tmp_path / RECORDS).read_bytes().replace(b'"variant"', b'"vari\x00', 1)
    (tmp_path / RECORDS).write_bytes(damaged)
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "records.jsonl line 1 is not JSON" in err and "Traceback" not in err, err
    assert (tmp_path / RECORDS).read_bytes() == damaged


# ---------------------------------------------------------------------------------------------------
# 2. Two runs, one directory

HOLD = """
import sys, time
from vlmstress.runlog import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_eval_on_a_held_directory_exits_2_and_touches_nothing(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RECORDS).write_text('{"sample_id": "x", "variant": "base"}\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        res = subprocess.run(
            eval_command(tiny_ckpt, out), env=ENV, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "another vlmstress process is writing to" in lines[0], res.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel releases a killed holder's lock: no stale lock file to clean up by hand.
    with run_lock(out):
        pass


# ---------------------------------------------------------------------------------------------------
# 5. Determinism


@pytest.mark.slow
def test_same_command_and_seed_give_byte_identical_records(tiny_ckpt, reference, tmp_path):
    # A fresh process (its own hash seed, its own model load) against the in-process reference.
    out = tmp_path / "run"
    res = subprocess.run(eval_command(tiny_ckpt, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / RECORDS).read_bytes() == (reference / RECORDS).read_bytes()
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


# ---------------------------------------------------------------------------------------------------
# 4. Judge and API faults

JUDGE_PROMPT_START = "You check whether a model's final answer follows"
RETRIES = 2  # VLMSTRESS_OPENAI_RETRIES below: at most 3 attempts per request


def fault_plan(kind: str, k: int) -> str:
    """What the server does to requests about question k: a fault on the first attempt only
    (transient), on every attempt (permanent), or nothing."""
    plans = ["ok", "500", "429", "hang", "truncated", "malformed", "permanent", "nonsense"]
    salt = 0 if kind == "model" else 3  # model and judge fail on different questions
    return plans[(k + salt) % len(plans)]


class FaultyServer:
    """The responder: model and judge requests, told apart by the judge's prompt, each with the
    fault plan of their question number."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def __call__(self, request: ChatRequest) -> Reply | str:
        text = request.user_text
        kind = "judge" if text.startswith(JUDGE_PROMPT_START) else "model"
        k = int(re.search(r"Question number (\d+)", text).group(1))
        key = hashlib.sha256(json.dumps(request.body, sort_keys=True).encode()).hexdigest()
        self.attempts[key] = attempt = self.attempts.get(key, 0) + 1
        plan = fault_plan(kind, k)
        if plan == "permanent" or (attempt == 1 and plan not in ("ok", "nonsense")):
            return {
                "permanent": error_reply(500, "down for good"),
                "500": error_reply(500, "internal error"),
                "429": error_reply(429, "slow down", retry_after="1"),
                "hang": Reply(json=completion("late"), delay=5.0),
                "truncated": Reply(raw=b'{"choices": [{"message": {"content": "<ans', content_length=400),
                "malformed": Reply(raw=b"<html>502 Bad Gateway</html>"),
            }.get(plan, error_reply(500, "down for good"))
        if kind == "judge":
            return (
                "I would rather not say." if plan == "nonsense" else '{"supports": "A", "consistent": true}'
            )
        return "<think>The picture shows the first option, so A.</think><answer>A</answer>"


def test_api_and_judge_faults_end_in_error_records_and_error_verdicts(tmp_path, monkeypatch, capsys):
    rows = [
        {
            "id": f"q{k}",
            "question": f"Question number {k}: which one?",
            "options": ["x", "y", "z"],
            "answer": "A",
        }
        for k in range(16)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("VLMSTRESS_OPENAI_TIMEOUT", "0.5")
    monkeypatch.setenv("VLMSTRESS_OPENAI_RETRIES", str(RETRIES))
    monkeypatch.setenv("VLMSTRESS_OPENAI_BACKOFF", "0.01")
    responder = FaultyServer()
    with FakeOpenAIServer(responder) as server:
        t0 = time.monotonic()
        code = main(
            ["eval", "--model", f"openai:vlm@{server.base_url}", "--judge", f"openai:judge@{server.base_url}"]
            + ["--data", str(data), "--variants", "base", "--out", str(tmp_path / "run")]
        )
        seconds = time.monotonic() - t0
        n_requests = server.n_requests
    assert code == 0, capsys.readouterr().err
    assert seconds < 30  # the 5 s hangs were cut by the 0.5 s timeout, Retry-After was 1 s

    records = {r["sample_id"]: r for r in read_records(tmp_path / "run" / RECORDS)}
    assert len(records) == 16
    for k in range(16):
        r, model_plan, judge_plan = records[f"q{k}"], fault_plan("model", k), fault_plan("judge", k)
        if model_plan == "permanent":
            assert r["error"].startswith(f"HTTP 500: down for good after {RETRIES + 1} attempts"), r["error"]
            continue
        assert r["error"] is None and r["answer"] == "A" and r["correct"], (k, r)
        # Transient faults were retried to an answer; a judge that failed or made no sense is an
        # `error` verdict, and never `consistent`.
        expected = "error" if judge_plan in ("permanent", "nonsense") else "consistent"
        assert r["judge"]["verdict"] == expected, (k, judge_plan, r["judge"])
    # Bounded retries: 16 model and 14 judge prompts, at most 3 attempts each.
    assert n_requests <= (16 + 14) * (RETRIES + 1)

    base = json.loads((tmp_path / "run" / "metrics.json").read_text())["variants"]["base"]
    n_error_verdicts = sum(1 for r in records.values() if r["judge"] and r["judge"]["verdict"] == "error")
    assert base["errors"] == 2 and base["n"] == 14 and n_error_verdicts == 4
    assert base["quadrants"]["unknown"] == pytest.approx(n_error_verdicts / 14)
    assert base["quadrants"]["consistent_correct"] == pytest.approx(10 / 14)
    assert base["consistency_adjusted_accuracy"] == pytest.approx(10 / 14)
