"""Sharded evaluation: one `vlmstress eval` run spread over several processes.

Under `torchrun` or `accelerate launch` (which set RANK / WORLD_SIZE), `vlmstress eval` becomes one
rank of a sharded run. The layout of DIR:

  records.jsonl                         the merged log, as a single-process run writes it
  shards/records.rank{r}-of{w}.jsonl    what rank r of a w-process run finished, a batch at a time
  shards/.records.rank{r}-of{w}.commit  its committed length (the same discipline as records.jsonl)
  shards/.lock.rank{r}-of{w}            flock held by rank r while it lives

How the work is split: every rank computes the same plan (what is left to do, in the order a single
process would do it), cuts it into the same batches a single process would, and takes batch j when
j % world == rank. Splitting by batch rather than by sample keeps every batch's composition, and so
its padding and its floats, the same as a one-process run's: the merged log is byte for byte the log
of one process. A killed run has finished whole batches only (each shard is cut back to its last
commit), so what is left is again a run of whole batches, whatever the process count of the rerun.

Who does what: rank 0 holds the run lock (runner.run_lock, as a single process does) for the whole
run; it alone writes config.json, records.jsonl and the metrics. Every rank holds a lock on its own
shard only, so ranks never wait on each other's locks; a new run refuses to start while any shard
lock is held (a rank orphaned by its launcher that still writes). On start rank 0 repairs the logs;
then every rank reads records.jsonl and every shard (of any process count) to learn what is done; at
the end rank 0 waits for the others, appends the shards' records to records.jsonl in the order one
process would have written them (each (sample, variant) once), deletes the shards and computes the
metrics exactly as runner.run_eval does. A single-process rerun that finds shards takes this path
with one rank (runner.run_eval hands over), so a run killed under 4 processes resumes under 1 or 2.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

from vlmstress.data.schema import Sample
from vlmstress.runner import (
    RECORDS,
    RunSpec,
    _fsync_dir,
    _generate_all,
    _Log,
    check_same_run,
    commit_path,
    config_text,
    drop_failed,
    finish_run,
    flock_or_refuse,
    plan,
    read_records,
    remove_stale_temps,
    run_lock,
    write_atomic,
)

SHARDS = "shards"
_SHARD = re.compile(r"records\.rank(\d+)-of(\d+)\.jsonl")
# How long a rank may wait for the others at a barrier: the end-of-run barrier waits for the slowest
# rank, which on a long run can be far behind (the process-group default is 30 minutes). A rank that
# dies does not leave the others waiting this long: the launcher stops them.
BARRIER_TIMEOUT = timedelta(hours=24)

Key = tuple[str, str]


# -- pure functions -------------------------------------------------------------------------------


def _launcher_value(names: Sequence[str], default: int, env: dict[str, str] | None) -> int:
    """The first of `names` set to a whole number in the environment, else `default`."""
    env = os.environ if env is None else env
    for name in names:
        if env.get(name, "").strip().isdigit():
            return int(env[name])
    return default


def world_size_from_env(env: dict[str, str] | None = None) -> int:
    """The process count a launcher announced (torchrun and accelerate set WORLD_SIZE, MPI its own)."""
    return _launcher_value(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"), 1, env)


def rank_from_env(env: dict[str, str] | None = None) -> int:
    """This process's rank as the launcher announced it (0 when not launched)."""
    return _launcher_value(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0, env)


def batches(items: Sequence[Any], batch_size: int) -> list[Sequence[Any]]:
    """`items` cut into consecutive batches, as runner._generate_all cuts them."""
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def assign(n_batches: int, rank: int, world: int) -> list[int]:
    """The batches rank `rank` of `world` runs: j with j % world == rank (round robin, so every rank
    gets an equal share of each variant's prompts, whatever their cost)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(range(rank, n_batches, world))


def record_key(record: dict) -> Key:
    return record["sample_id"], record["variant"]


def merge_records(
    existing: Iterable[Key], shards: Iterable[Iterable[dict]], order: Sequence[Key]
) -> list[dict]:
    """The shard records to append to a log that holds the keys `existing`.

    Each (sample, variant) once: one already in the log is left out, and of several shard copies
    (a rerun after a crash between merging and deleting the shards) the first is kept. Sorted by
    `order` (the keys in the order one process would have written them); keys not in `order` (a wider
    earlier run's) come last, in shard order.
    """
    seen = set(existing)
    new = []
    for records in shards:
        for r in records:
            key = record_key(r)
            if key not in seen:
                seen.add(key)
                new.append(r)
    position = {key: i for i, key in enumerate(order)}
    return sorted(new, key=lambda r: position.get(record_key(r), len(position)))


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(rank, world) of a shard file name, or None for any other file."""
    m = _SHARD.fullmatch(name)
    if not m or int(m[1]) >= int(m[2]):
        return None
    return int(m[1]), int(m[2])


# -- files ----------------------------------------------------------------------------------------


def shard_path(out: Path, rank: int, world: int) -> Path:
    return Path(out) / SHARDS / f"records.rank{rank}-of{world}.jsonl"


def shard_files(out: str | Path) -> list[Path]:
    """Every shard in `out`, of any process count, by (process count, rank)."""
    folder = Path(out) / SHARDS
    if not folder.is_dir():
        return []
    found = [(parse_shard_name(p.name), p) for p in folder.iterdir()]
    return [p for rw, p in sorted((rw[::-1], p) for rw, p in found if rw is not None)]


def done_keys(out: Path) -> set[Key]:
    """The (sample, variant) pairs finished in records.jsonl or in any shard."""
    done = {record_key(r) for r in read_records(out / RECORDS)}
    for path in shard_files(out):
        done.update(record_key(r) for r in read_records(path))
    return done


def _lock_path(out: Path, rank: int, world: int) -> Path:
    return Path(out) / SHARDS / f".lock.rank{rank}-of{world}"


@contextmanager
def rank_lock(out: Path, rank: int, world: int) -> Iterator[None]:
    """Hold this rank's shard (flock: the kernel releases it when the rank dies, however it dies)."""
    path = _lock_path(out, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        flock_or_refuse(f, f"another vlmstress process is writing shard {rank} of {world} in {out}")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_no_live_shard_writers(out: Path) -> None:
    """A UsageError if a process still holds a shard of `out` (a rank that outlived its rank 0)."""
    folder = Path(out) / SHARDS
    for path in sorted(folder.glob(".lock.rank*")) if folder.is_dir() else ():
        with path.open("a") as f:
            flock_or_refuse(
                f,
                f"another vlmstress process is writing to {out} ({path.name[6:]}); "
                "wait for it or use another --out",
            )
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(out: Path, *, retry_failed: bool = False) -> None:
    """Rank 0, holding the run lock (which saw no live shard writer), before any rank reads: remove
    temp-file debris and cut records.jsonl and every shard back to their last commit (so all ranks
    read whole batches); with `retry_failed`, take the failed model calls out of them all."""
    remove_stale_temps(out)
    for stale in (out / SHARDS).glob(".*.tmp[0-9]*") if (out / SHARDS).is_dir() else ():
        stale.unlink(missing_ok=True)
    for path in (out / RECORDS, *shard_files(out)):
        records = read_records(path, repair=True)
        if retry_failed:
            drop_failed(path, records)


def merge_shards(out: Path, samples: Sequence[Sample], spec: RunSpec) -> int:
    """Rank 0, every rank finished: append the shards' records to records.jsonl, then delete the
    shards. Returns the number of records appended.

    A crash before the append is committed leaves the shards (the next run cuts records.jsonl back
    and merges again); a crash after it leaves shards whose records are all in the log already.
    """
    path = out / RECORDS
    existing = {record_key(r) for r in read_records(path)}
    # The order one process resuming this log would write in: its errors first, then its prompts.
    todo, errors = plan(samples, spec.variants, spec.seed, spec.template, existing)
    order = [record_key(r) for r in errors] + [(s.sample_id, p.variant) for s, p in todo]
    files = shard_files(out)
    new = merge_records(existing, (read_records(f) for f in files), order)
    with _Log(path) as log:
        log.append(new)
    folder = out / SHARDS
    for f in files:
        commit_path(f).unlink(missing_ok=True)
        f.unlink()
    for f in folder.glob(".lock.rank*"):
        f.unlink(missing_ok=True)
    with suppress(OSError):  # something else was put there: leave it
        folder.rmdir()
    _fsync_dir(out)
    return len(new)


# -- running ---------------------------------------------------------------------------------------


def run_rank(
    model: Any,
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    sync: Callable[[], None] = lambda: None,
    judges: Sequence = (),
    progress: bool = True,
    on_batch: Callable[[int, float], None] | None = None,
    retry_failed: bool = False,
) -> dict | None:
    """Rank `rank` of a `world`-process run; `sync` is a barrier over all ranks. Rank 0 must hold
    `run_lock(out)` (and have checked the run's identity); it returns the metrics, the others None.
    `retry_failed`: as run_eval's (rank 0 acts on it for all)."""
    out = Path(out)
    if rank == 0:
        prepare(out, retry_failed=retry_failed)
        write_atomic(out / "config.json", config_text(spec, samples))
    sync()  # the logs are whole batches now
    with rank_lock(out, rank, world):
        done = done_keys(out)
        sync()  # every rank has read what is done before any rank writes more
        todo, errors = plan(samples, spec.variants, spec.seed, spec.template, done)
        chunks = batches(todo, spec.batch_size)
        # Whole batches of the one-process plan, flattened: _generate_all cuts them back the same way
        # (every batch but the plan's last is full, and the last can only be a rank's last).
        mine = [item for j in assign(len(chunks), rank, world) for item in chunks[j]]
        with _Log(shard_path(out, rank, world)) as log:
            if rank == 0:
                log.append(errors)
            _generate_all(model, mine, spec, judges, log, progress, on_batch)
        sync()  # every shard is complete
    if rank != 0:
        return None
    merge_shards(out, samples, spec)
    return finish_run(samples, spec, out)


def _max_over_ranks(state: Any, value: int) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], device=state.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def run_distributed(
    load: Callable[[], tuple[Any, Sequence]],
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    retry_failed: bool = False,
) -> dict | None:
    """This process's rank of a launched run (torchrun / accelerate launch): rank 0 takes the run lock
    and checks the run before any rank loads its model (`load() -> (model, judges)`), so a refused
    run costs no loading; returns the metrics on rank 0, None on the others."""
    import torch
    from accelerate import PartialState

    # accelerate only joins CPU processes into a group when told cpu=True (gloo); on GPUs it uses
    # nccl and makes cuda:LOCAL_RANK each rank's default device, so `--model-opt device=cuda` works.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    rank, world = state.process_index, state.num_processes
    out = Path(out)
    try:
        with ExitStack() as stack:
            error: BaseException | None = None
            if rank == 0:
                try:
                    stack.enter_context(run_lock(out))
                    check_same_run(out, spec)
                except Exception as exc:
                    error = exc
            # Every rank learns whether rank 0 may go on.
            if _max_over_ranks(state, int(error is not None)):
                if error is not None:
                    raise error
                # Rank 0 says why, once. The others leave quietly: a rank that failed would make the
                # launcher stop rank 0, maybe before it has said it.
                return None
            model, judges = load()
            return run_rank(
                model,
                samples,
                spec,
                out,
                rank=rank,
                world=world,
                sync=state.wait_for_everyone,
                judges=judges,
                progress=rank == 0,
                retry_failed=retry_failed,
            )
    finally:
        state.destroy_process_group()
