"""The run log's discipline: how a run folder is written, locked, committed and read.

records.jsonl is the log every report is computed from. Each batch's records are appended and
fsynced as soon as the batch finishes (`Log.append`), then the log's new length is committed to a
small side file (`.records.commit`); `read_records(repair=True)` cuts a log back to its last commit,
so a crash loses at most the batch in flight and never leaves part of one behind. Small files are
replaced whole (`write_atomic`). `run_lock` keeps a second live process out of a folder. A sharded
run keeps one such log per rank under shards/ (`shard_path`), each with its own lock (`rank_lock`).
The engine that writes these logs is runner.py; the launcher glue of a sharded run is shard.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmstress.errors import UsageError

RECORDS = "records.jsonl"
COMMIT = ".records.commit"
# The files the runner writes with write_atomic.
RUN_FILES = ("config.json", "metrics.json", "summary.md", COMMIT)
SHARDS = "shards"
_SHARD = re.compile(r"records\.rank(\d+)-of(\d+)\.jsonl")


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file: it sees the old file or
    the new one. The directory is fsynced too, so the rename itself survives a power cut."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flock_or_refuse(f, message: str) -> None:
    """Take an exclusive flock on open file `f` at once, or refuse with a UsageError (one line)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(message) from None


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out` for this process (flock, so the kernel releases it when the holder dies, however it
    dies). A UsageError when another process holds it, or still writes a shard there (a rank of a
    sharded run that outlived its rank 0, shard.py); nesting in one process is refused the same way."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as f:
        flock_or_refuse(f, f"another vlmstress process is writing to {out}; wait for it or use another --out")
        try:
            check_no_live_shard_writers(out)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """The records of a run log; a torn last line (a crash mid-write) is dropped.

    With `repair` (the resuming runner, under the lock) the file is also cut back to the length last
    committed to `.records.commit`, or, without a usable commit, to its last whole line, so that
    appends continue from a clean batch boundary.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if repair:
        good_end = min(good_end, _committed_length(path, data))
    records = []
    for number, line in enumerate(data[:good_end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:  # not a torn write (that is only ever the last line): damage
            raise ValueError(f"{path} line {number} is not JSON ({e})") from None
    if repair and good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return records


def iter_records(path: Path) -> Iterator[dict]:
    """The records of a run log one at a time, as `read_records(path)` would return them (a torn
    last line is dropped, a damaged line is a ValueError naming it), holding one line in memory."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return  # a torn write: only ever the last line
            # bytes.splitlines also ends a line at a lone \r, as read_records' split does.
            for part in line.splitlines():
                if not part.strip():
                    continue
                try:
                    yield json.loads(part)
                except ValueError as e:
                    raise ValueError(f"{path} line {number} is not JSON ({e})") from None


def commit_path(log: Path) -> Path:
    """The commit file of a log: `.records.commit` beside records.jsonl (COMMIT), and likewise
    `.records.rank0-of2.commit` beside a shard of a sharded run (shard.py)."""
    return log.with_name(f".{log.stem}.commit")


def _committed_length(log: Path, data: bytes) -> int:
    """The log length of the last committed batch; len(data) when there is no usable commit (a log
    written before commits existed, or by hand), so only the torn-line rule applies."""
    try:
        commit = json.loads(commit_path(log).read_text())
        size, lines = int(commit["bytes"]), int(commit["lines"])
    except (OSError, ValueError, KeyError, TypeError):
        return len(data)
    # A commit that does not describe a prefix of this log (the log was replaced) is ignored.
    if size > len(data) or (size and data[size - 1 : size] != b"\n") or data[:size].count(b"\n") != lines:
        return len(data)
    return size


def remove_stale_temps(out: Path) -> None:
    """Temp files of a process killed inside write_atomic."""
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.tmp[0-9]*"):
            stale.unlink(missing_ok=True)


class Log:
    """records.jsonl (or a shard) opened for appending. Each `append` is one batch: written, fsynced,
    and then committed to its commit file, so a resume can cut off a batch only partly written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = _count_lines(path)

    def __enter__(self) -> Log:
        self.file = self.path.open("a", encoding="utf-8")
        self._commit()  # a log that predates commits gets one before anything is appended
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.file.write("".join(json.dumps(r) + "\n" for r in records))
        self.lines += len(records)
        self._commit()

    def _commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        size = os.fstat(self.file.fileno()).st_size
        write_atomic(commit_path(self.path), json.dumps({"bytes": size, "lines": self.lines}))


def _count_lines(path: Path) -> int:
    """The newlines in a file, read a MiB at a time (a resumed log may be large)."""
    if not path.exists():
        return 0
    lines = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(rank, world) of a shard file name, or None for any other file."""
    m = _SHARD.fullmatch(name)
    if not m or int(m[1]) >= int(m[2]):
        return None
    return int(m[1]), int(m[2])


def shard_path(out: Path, rank: int, world: int) -> Path:
    return Path(out) / SHARDS / f"records.rank{rank}-of{world}.jsonl"


def shard_files(out: str | Path) -> list[Path]:
    """Every shard in `out`, of any process count, by (process count, rank)."""
    folder = Path(out) / SHARDS
    if not folder.is_dir():
        return []
    found = [(parse_shard_name(p.name), p) for p in folder.iterdir()]
    return [p for rw, p in sorted((rw[::-1], p) for rw, p in found if rw is not None)]


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
