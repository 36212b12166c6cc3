"""Sharded evaluation (shard.py): the pure pieces, ranks as threads with a batch-sensitive fake
model (cheap, and it shows any regrouping of prompts), and real 2-process runs of the command line
under torchrun and accelerate launch, one of them killed and finished by one process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vlmstress import runlog, runner, shard
from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.models.base import Generation
from vlmstress.runlog import RECORDS, Log, run_lock
from vlmstress.runner import RunSpec, make_record, plan, run_eval

# -- pure functions -------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_assign_gives_every_batch_to_exactly_one_rank(world):
    for n in range(0, 15):
        shares = [runner.assign(n, r, world) for r in range(world)]
        flat = sorted(j for s in shares for j in s)
        assert flat == list(range(n)), (n, world)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert all(j % world == r for r, s in enumerate(shares) for j in s)
    with pytest.raises(ValueError):
        runner.assign(4, world, world)


def test_batches_cut_as_the_runner_cuts():
    assert runner.batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert runner.batches([], 3) == []


def rec(sample_id, variant="base", **extra):
    return {"sample_id": sample_id, "variant": variant, **extra}


def test_merge_records_dedups_and_restores_one_process_order():
    order = [("a", "base"), ("b", "base"), ("c", "base"), ("a", "wt"), ("b", "wt")]
    shards = [
        [rec("b", "wt", n=0), rec("a", "base", n=0), rec("x", "base", n=0)],  # x: not in this plan
        [rec("c", "base", n=1), rec("b", "base", n=1), rec("a", "base", n=1), rec("w", "base", n=1)],
    ]
    merged = runner.merge_records({("b", "base")}, shards, order)
    keys = [(r["sample_id"], r["variant"]) for r in merged]
    # b/base is in the log already; a/base twice: the first shard's copy; x and w last, shard order
    assert keys == [("a", "base"), ("c", "base"), ("b", "wt"), ("x", "base"), ("w", "base")]
    assert merged[0]["n"] == 0
    assert runner.merge_records(set(), [], order) == []


def test_shard_names_and_files(tmp_path):
    assert runlog.parse_shard_name("records.rank1-of2.jsonl") == (1, 2)
    for other in (
        "records.rank2-of2.jsonl",
        ".records.rank0-of2.commit",
        "records.jsonl",
        "x.rank0-of1.jsonl",
    ):
        assert runlog.parse_shard_name(other) is None, other
    assert runlog.shard_files(tmp_path) == []
    names = ["records.rank10-of12.jsonl", "records.rank2-of12.jsonl", "records.rank0-of4.jsonl"]
    for name in [*names, ".records.rank0-of4.commit", ".lock.rank0-of4", "notes.txt"]:
        (tmp_path / "shards").mkdir(exist_ok=True)
        (tmp_path / "shards" / name).write_text("")
    assert [p.name for p in runlog.shard_files(tmp_path)] == [names[2], names[1], names[0]]
    assert runlog.shard_path(tmp_path, 3, 4) == tmp_path / "shards" / "records.rank3-of4.jsonl"


def test_world_size_from_env():
    assert shard.world_size_from_env({}) == 1
    assert shard.world_size_from_env({"WORLD_SIZE": "4"}) == 4
    assert shard.world_size_from_env({"PMI_SIZE": "3"}) == 3
    assert shard.world_size_from_env({"WORLD_SIZE": "lots"}) == 1
    assert shard.rank_from_env({}) == 0
    assert shard.rank_from_env({"RANK": "2", "WORLD_SIZE": "4"}) == 2
    assert shard.rank_from_env({"OMPI_COMM_WORLD_RANK": "1"}) == 1


# -- ranks as threads -----------------------------------------------------------------------------


class BatchSensitive:
    """Its answers name the prompts that shared the batch (as padding moves a real model's floats), so
    any regrouping shows in the records; `calls` lists every (sample, variant) it generated."""

    name = "batch-sensitive"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def generate(self, prompts, *, max_new_tokens):
        with self._lock:
            self.calls.extend((p.sample_id, p.variant) for p in prompts)
        group = "+".join(f"{p.sample_id[-2:]}/{p.variant}" for p in prompts)
        return [
            Generation(f"<think>batch {group}</think><answer>{'AB'[len(prompts) % 2]}</answer>")
            for _ in prompts
        ]


VARIANTS = ["base", "wrong_think", "wrong_caption"]


@pytest.fixture
def samples():
    s = synth.generate(9, seed=0)
    s[4] = replace(s[4], error="answer not among the options")  # error records go in too
    return s


def spec_for(samples, batch_size=2) -> RunSpec:
    return RunSpec(model="batch-sensitive", data="synth:9", variants=VARIANTS, batch_size=batch_size)


@pytest.fixture
def reference(tmp_path, samples):
    out = tmp_path / "reference"
    metrics = run_eval(BatchSensitive(), samples, spec_for(samples), out, progress=False)
    return out, metrics


def run_threads(model, samples, spec, out, world, **options):
    """`world` ranks of one run as threads, rank 0 holding the run lock, as run_distributed sets up."""
    barrier, results, errors = threading.Barrier(world, timeout=60), {}, []

    def rank_main(rank):
        kwargs = {"rank": rank, "world": world, "sync": barrier.wait, "progress": False, **options}
        try:
            if rank == 0:
                with run_lock(out):
                    results[rank] = runner.run_rank(model, samples, spec, out, **kwargs)
            else:
                results[rank] = runner.run_rank(model, samples, spec, out, **kwargs)
        except BaseException as exc:  # surfaced below; the barrier lets the others go
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert all(results[r] is None for r in range(1, world))
    return results[0]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_write_the_log_of_one_process(tmp_path, samples, reference, world):
    ref_out, ref_metrics = reference
    model, out = BatchSensitive(), tmp_path / "run"
    metrics = run_threads(model, samples, spec_for(samples), out, world)
    assert (out / RECORDS).read_bytes() == (ref_out / RECORDS).read_bytes()
    assert metrics == ref_metrics
    for name in ("metrics.json", "summary.md", "config.json", ".records.commit"):
        assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name
    assert not (out / "shards").exists()
    assert sorted(model.calls) == sorted(set(model.calls))  # nothing generated twice


def killed_run(out, samples, spec, world, finished, torn_rank=None):
    """What a `world`-process run killed midway leaves: rank r committed the first finished[r] of its
    batches (of the one-process plan); `torn_rank` was killed mid-append (one whole line of its
    next batch and half another written, not committed). Returns the committed keys."""
    todo, errors = plan(samples, spec.variants, spec.seed, spec.template, set())
    chunks = runner.batches(todo, spec.batch_size)
    model, committed = BatchSensitive(), set()
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({**spec.__dict__, "n_samples": len(samples)}))
    for rank in range(world):
        mine = [chunks[j] for j in runner.assign(len(chunks), rank, world)]
        path = runlog.shard_path(out, rank, world)
        path.parent.mkdir(exist_ok=True)
        with Log(path) as log:
            if rank == 0:
                log.append([r.to_json() for r in errors])
                committed |= {(r["sample_id"], r["variant"]) for r in errors}
            for chunk in mine[: finished[rank]]:
                gens = model.generate([p for _, p in chunk], max_new_tokens=8)
                log.append([make_record(s, p, g, []).to_json() for (s, p), g in zip(chunk, gens)])
                committed |= {(s.sample_id, p.variant) for s, p in chunk}
        if rank == torn_rank:
            chunk = mine[finished[rank]]
            gens = model.generate([p for _, p in chunk], max_new_tokens=8)
            lines = [json.dumps(make_record(s, p, g, []).to_json()) + "\n" for (s, p), g in zip(chunk, gens)]
            with path.open("a") as f:
                f.write(lines[0] + lines[1][:30])
    return committed


@pytest.mark.parametrize(
    ("finished", "torn_rank", "resume_world"), [([2, 1, 0, 2], 1, 1), ([1, 3, 2, 0], 3, 2)]
)
def test_a_run_killed_under_4_processes_resumes_under_1_or_2(
    tmp_path, samples, reference, finished, torn_rank, resume_world
):
    ref_out, ref_metrics = reference
    spec, out = spec_for(samples), tmp_path / "run"
    committed = killed_run(out, samples, spec, 4, finished, torn_rank=torn_rank)
    model, said = BatchSensitive(), []
    if resume_world == 1:  # the single-process run: the engine's one-rank case
        metrics = run_eval(model, samples, spec, out, progress=False, log=said.append)
    else:
        metrics = run_threads(model, samples, spec, out, resume_world, log=said.append)
    # said once (by rank 0), as a single-process resume says it
    assert said == [f"resumed: {len(committed)} of {len(samples) * len(VARIANTS)} records already done"]
    everything = {(s.sample_id, v) for s in samples for v in VARIANTS}
    generated = set(model.calls)
    assert len(generated) == len(model.calls), "a prompt was generated twice"
    assert not generated & committed, "finished work was repeated"
    assert generated | committed == everything, "work was lost"
    # the torn batch was redone whole, and every batch has its one-process composition
    assert (out / RECORDS).read_bytes() == (ref_out / RECORDS).read_bytes()
    assert metrics == ref_metrics
    assert not (out / "shards").exists()


class Crash(Exception):
    pass


def test_a_crash_between_merging_and_deleting_the_shards_duplicates_nothing(
    tmp_path, samples, reference, monkeypatch
):
    ref_out, ref_metrics = reference
    spec, out = spec_for(samples), tmp_path / "run"

    def crash(path):
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(runner, "commit_path", crash)  # merge_shards dies deleting its first shard
        with pytest.raises(Crash):
            run_threads(BatchSensitive(), samples, spec, out, 2)
    assert len(runlog.shard_files(out)) == 2 and (out / RECORDS).exists()
    model = BatchSensitive()
    assert run_eval(model, samples, spec, out, progress=False) == ref_metrics
    assert model.calls == []
    assert (out / RECORDS).read_bytes() == (ref_out / RECORDS).read_bytes()
    assert not (out / "shards").exists()


class Flaky(BatchSensitive):
    """Fails the first call of each prompt in `flaky`, as a loaded server times out now and then."""

    def __init__(self, flaky) -> None:
        super().__init__()
        self.flaky = flaky

    def generate(self, prompts, *, max_new_tokens):
        with self._lock:
            first = [(p.sample_id, p.variant) not in self.calls for p in prompts]
        out = super().generate(prompts, max_new_tokens=max_new_tokens)
        return [
            Generation("", error="APITimeoutError: Request timed out.")
            if again and (p.sample_id, p.variant) in self.flaky
            else g
            for p, g, again in zip(prompts, out, first, strict=True)
        ]


def test_failed_calls_in_the_log_and_in_shards_are_retried_once_when_asked(tmp_path, samples, monkeypatch):
    spec, out = spec_for(samples), tmp_path / "run"
    flaky = {(samples[0].sample_id, "base"), (samples[7].sample_id, "wrong_caption")}
    model = Flaky(flaky)
    with monkeypatch.context() as m:  # merge_shards dies deleting its first shard: records are in both
        m.setattr(runner, "commit_path", lambda path: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            run_threads(model, samples, spec, out, 2)
    assert runlog.shard_files(out) and (out / RECORDS).exists()
    assert len(model.calls) == 24  # 9 samples x 3 variants, less the broken sample's 3
    run_threads(model, samples, spec, out, 2, retry_failed=True)
    assert sorted(model.calls[24:]) == sorted(flaky)
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert len(records) == 27 and len({(r["sample_id"], r["variant"]) for r in records}) == 27
    assert {r["error"] for r in records} == {None, "sample: answer not among the options"}
    assert not (out / "shards").exists()


def test_shards_count_as_the_log_of_a_run(tmp_path, samples):
    """A killed sharded run has no records.jsonl yet: its shards still make a rerun with another
    seed a different run (refused), and a rank that outlived its rank 0 holds the directory."""
    spec, out = spec_for(samples), tmp_path / "run"
    killed_run(out, samples, spec, 2, [1, 1])
    with pytest.raises(UsageError, match="different seed"):
        run_eval(BatchSensitive(), samples, replace(spec, seed=5), out, progress=False)
    with runlog.rank_lock(out, 1, 2):
        before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        with pytest.raises(UsageError, match="another vlmstress process"):
            run_eval(BatchSensitive(), samples, spec, out, progress=False)
        assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # once that rank is gone, the same rerun finishes the run
    metrics = run_eval(BatchSensitive(), samples, spec, out, progress=False)
    assert metrics["variants"]["base"]["n"] == 8 and not (out / "shards").exists()


# -- real processes -------------------------------------------------------------------------------

# The shipped tiny model on 10 synth samples x 2 variants in batches of 2: 10 batches, 5 per rank.
EVAL = ["eval", "--model", "tiny", "--data", "synth:10", "--variants", "base,wrong_think"]
EVAL += ["--batch-size", "2", "--max-new-tokens", "64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]


def accelerate_launch(port: int) -> list[str]:
    # `accelerate launch --cpu` starts one process whatever --num_processes says (several CPU processes
    # need mpirun); --multi_gpu starts them through torch's elastic launcher, GPUs or not.
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m",
    ]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The same eval in one process (in this one): what every sharded run must reproduce."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main([*EVAL, "--out", str(out)]) == 0
    return out


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def assert_same_run(out: Path, reference: Path) -> None:
    mine, theirs = lines_of(out / RECORDS), lines_of(reference / RECORDS)
    assert len(mine) == len(theirs) == 20
    # as sets of records first (records carry no timing fields), then byte for byte: the merge
    # restores the one-process order and the batches had their one-process composition
    as_set = lambda rs: {json.dumps(r, sort_keys=True) for r in rs}  # noqa: E731
    assert as_set(mine) == as_set(theirs)
    assert (out / RECORDS).read_bytes() == (reference / RECORDS).read_bytes()
    for name in ("metrics.json", "summary.md", "config.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / "shards").exists()


def torchrun_eval(out: Path, timeout: float) -> subprocess.CompletedProcess:
    """`vlmstress eval` of EVAL into `out` by two processes under torchrun."""
    cmd = [*TORCHRUN, "vlmstress.cli", *EVAL, "--out", str(out)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_under_torchrun_give_the_run_of_one(one_process, tmp_path):
    out = tmp_path / "run"
    res = torchrun_eval(out, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("records, metrics and summary in") == 1  # rank 0 reports, once
    assert_same_run(out, one_process)


def committed_keys(out: Path) -> dict[str, set]:
    """Per shard file, the (sample, variant) keys up to its last commit (read independently of
    the runner: the commit file's byte count, cut at that length)."""
    from vlmstress.runlog import commit_path

    found = {}
    for path in runlog.shard_files(out):
        size = json.loads(commit_path(path).read_text())["bytes"]
        found[path.name] = {runner.record_key(json.loads(x)) for x in path.read_bytes()[:size].splitlines()}
    return found


def wait_until(predicate, proc, what, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the launcher exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_processes_killed_midway_finish_under_one(one_process, tmp_path, monkeypatch, capsys):
    import psutil

    from vlmstress.models.hf import HFModel

    out, shards = tmp_path / "run", tmp_path / "run" / "shards"
    rank_files = [runlog.shard_path(out, r, 2) for r in (0, 1)]

    def n_lines(path):
        return path.read_bytes().count(b"\n") if path.exists() else 0

    with (tmp_path / "launcher.err").open("w") as err:
        launcher = subprocess.Popen(
            [*accelerate_launch(free_port()), "vlmstress.cli", *EVAL, "--out", str(out)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        workers = {}
        try:
            # Both ranks have finished a batch (the work is split), and most is still to do.
            wait_until(lambda: all(n_lines(f) >= 2 for f in rank_files), launcher, "a batch from each rank")
            for p in psutil.Process(launcher.pid).children(recursive=True):
                try:
                    rank, cmdline = p.environ().get("RANK"), " ".join(p.cmdline())
                except psutil.Error:  # a helper process that has gone already
                    continue
                if rank is not None and "vlmstress.cli" in cmdline:
                    workers[int(rank)] = p
            assert sorted(workers) == [0, 1]
            # Rank 1 outlives the rest (stopped, so it holds its shard without writing more): the
            # launcher (its elastic agent would stop rank 1) and rank 0 die by SIGKILL.
            os.kill(workers[1].pid, signal.SIGSTOP)
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            os.killpg(workers[0].pid, signal.SIGKILL)
            psutil.wait_procs([workers[0]], timeout=30)
            # A rerun now would mix its records with a live rank's: refused, one line, exit 2.
            capsys.readouterr()
            assert main([*EVAL, "--out", str(out)]) == 2
            err_lines = capsys.readouterr().err.strip().splitlines()
            assert len(err_lines) == 1 and "another vlmstress process is writing" in err_lines[0], err_lines
        finally:
            for p in workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    psutil.wait_procs(list(workers.values()), timeout=30)

    committed = committed_keys(out)
    assert set(committed) == {f.name for f in rank_files} and all(committed.values())
    done = set().union(*committed.values())
    assert len(done) == sum(map(len, committed.values())) < 20  # no overlap, work left to do

    calls = []
    generate = HFModel.generate

    def counting(self, prompts, **kwargs):
        calls.extend((p.sample_id, p.variant) for p in prompts)
        return generate(self, prompts, **kwargs)

    monkeypatch.setattr(HFModel, "generate", counting)
    assert main([*EVAL, "--out", str(out)]) == 0  # one process finishes the run
    everything = {runner.record_key(r) for r in lines_of(one_process / RECORDS)}
    assert len(calls) == len(set(calls)), "a prompt was generated twice"
    assert not set(calls) & done, "finished work was repeated"
    assert set(calls) | done == everything, "work was lost"
    assert_same_run(out, one_process)
    assert not shards.exists()


@pytest.mark.slow
def test_a_launch_on_a_held_directory_is_refused_once_and_touches_nothing(tmp_path):
    """Rank 0 finds the directory held; every rank learns it before any loads a model, and the
    refusal is said once (the other rank leaves quietly, so the launcher cannot cut rank 0 short)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / RECORDS).write_text('{"sample_id": "x", "variant": "base"}\n')
    with run_lock(out):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        res = torchrun_eval(out, timeout=300)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert res.returncode != 0
    said = [line for line in res.stderr.splitlines() if line.startswith("vlmstress: ")]
    assert len(said) == 1 and "another vlmstress process is writing to" in said[0], res.stderr[-2000:]
    assert "Loading weights" not in res.stderr  # refused before any model was loaded
