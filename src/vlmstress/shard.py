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
metrics. The engine is runner.run_rank, whose one-rank case is the single-process run
(runner.run_eval): one process with shards to finish writes a shard of its own and merges, so a run
killed under 4 processes resumes under 1 or 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from vlmstress.data.schema import Sample
from vlmstress.runlog import run_lock
from vlmstress.runner import RunSpec, check_same_run, run_rank

# How long a rank may wait for the others at a barrier: the end-of-run barrier waits for the slowest
# rank, which on a long run can be far behind (the process-group default is 30 minutes). A rank that
# dies does not leave the others waiting this long: the launcher stops them.
BARRIER_TIMEOUT = timedelta(hours=24)


# -- the launcher ---------------------------------------------------------------------------------


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


# -- running ---------------------------------------------------------------------------------------


def _max_over_ranks(state: Any, value: int) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], device=state.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def run_distributed(
    load: Callable[[], tuple[Any, Sequence, Any]],
    samples: Sequence[Sample],
    spec: RunSpec,
    out: str | Path,
    *,
    retry_failed: bool = False,
) -> dict | None:
    """This process's rank of a launched run (torchrun / accelerate launch): rank 0 takes the run lock
    and checks the run before any rank loads its model (`load() -> (model, judges, extractor)`), so
    a refused run costs no loading; returns the metrics on rank 0, None on the others."""
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
            model, judges, extractor = load()
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
                extractor=extractor,
                log=print,
            )
    finally:
        state.destroy_process_group()
