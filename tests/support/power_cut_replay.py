"""What a power cut leaves on a disk, rebuilt from the log of tests/support/power_cut_fs.py.

The model, operation by operation: a file's data (its writes and truncates) reaches the disk
only through an fsync of that file, which makes all of them durable, in order; create, unlink
and rename are durable at once, in their order (as LazyFS, which keeps only data in its cache,
treats them). A cut right after operation ``i`` leaves, per file, its durable content plus:

* ``"dropped"``: nothing more: every unsynced write is lost (LazyFS's clear-cache);
* ``"partial"``: a random subset of the file's unsynced writes and truncates, each write cut
  into 512-byte sectors kept or lost one by one (applied in their order: a sector kept holds
  what was written into it last among the kept ones), and a sector not kept that lay past the
  end of the file may still have grown it, with zeros (the size reached the disk, the data did
  not): a disk that wrote back part of its cache, in any order, and tore writes.

This is harsher than what SQLite assumes of a disk (https://www.sqlite.org/atomiccommit.html):
it does not need sector writes to be atomic, lets a grown file hold garbage before its data,
and under its default powersafe overwrite needs only that a write changes no byte outside its
range, which no state here does. It is milder in one respect: creates, unlinks and renames
need no fsync of their folder here. SQLite fsyncs the folder after it makes a WAL or a
journal, before the first commit that uses it (seen in these logs), so that rule would change
no acknowledged state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.power_cut_fs import CREATE, FSYNC, RENAME, TRUNCATE, UNLINK, WRITE, Op

SECTOR = 512
MODES = ("dropped", "partial")


@dataclass(frozen=True)
class CutState:
    """The files (path -> bytes) a cut right after ``op`` leaves, in ``mode``; ``version``:
    of the durable content, for the ``"dropped"`` states (equal versions, equal files);
    ``unsynced``: per file, its writes and truncates not yet fsynced at the cut."""

    op: Op
    mode: str
    files: dict[str, bytes]
    version: int | None
    unsynced: dict[str, int]


def _apply(content: bytearray, op: Op) -> None:
    if op.kind == TRUNCATE:
        del content[op.number :]
        content.extend(bytes(max(0, op.number - len(content))))
        return
    end = op.number + len(op.data)
    if len(content) < op.number:
        content.extend(bytes(op.number - len(content)))
    content[op.number : end] = op.data


def _sectors(op: Op) -> Iterator[Op]:
    """A write cut at the 512-byte boundaries of the file."""
    at = op.number
    while at < op.number + len(op.data):
        end = min((at // SECTOR + 1) * SECTOR, op.number + len(op.data))
        yield Op(op.seq, op.time, WRITE, op.path, at, op.data[at - op.number : end - op.number])
        at = end


class Disk:
    """Every file's durable content and its writes since its last fsync."""

    def __init__(self, initial: dict[str, bytes]) -> None:
        self.durable = {path: bytearray(content) for path, content in initial.items()}
        self.pending: dict[str, list[Op]] = {path: [] for path in initial}
        self.version = 0

    def apply(self, op: Op) -> None:
        if op.kind in (CREATE, UNLINK, RENAME) or (op.kind == FSYNC and self.pending[op.path]):
            self.version += 1
        if op.kind == CREATE and op.path not in self.durable:
            self.durable[op.path], self.pending[op.path] = bytearray(), []
        elif op.kind in (WRITE, TRUNCATE):
            self.pending[op.path].append(op)
        elif op.kind == FSYNC:
            for write in self.pending[op.path]:
                _apply(self.durable[op.path], write)
            self.pending[op.path] = []
        elif op.kind == UNLINK:
            del self.durable[op.path], self.pending[op.path]
        elif op.kind == RENAME:
            new = op.data.decode()
            self.durable[new] = self.durable.pop(op.path)
            self.pending[new] = self.pending.pop(op.path)

    def dropped(self) -> dict[str, bytes]:
        return {path: bytes(content) for path, content in self.durable.items()}

    def partial(self, rng: random.Random) -> dict[str, bytes]:
        files = {}
        for path, content in self.durable.items():
            state = bytearray(content)
            keep = rng.random()  # how much of this file's cache reached the disk
            for op in self.pending[path]:
                for piece in [op] if op.kind == TRUNCATE else _sectors(op):
                    if rng.random() < keep:
                        _apply(state, piece)
                    elif piece.kind == WRITE and rng.random() < 0.5:
                        grown = piece.number + len(piece.data)
                        state.extend(bytes(max(0, grown - len(state))))
            files[path] = bytes(state)
        return files


def unsynced_after(initial: dict[str, bytes], ops: Iterable[Op], path: str) -> list[int]:
    """The sequence numbers of the operations after which ``path`` has unsynced writes (for
    a database file: the moments inside its checkpoints)."""
    disk, found = Disk({name: b"" for name in initial}), []
    for op in ops:
        disk.apply(op)
        if disk.pending.get(path):
            found.append(op.seq)
    return found


def cut_states(
    initial: dict[str, bytes], ops: Iterable[Op], cuts: set[int], rng: random.Random
) -> Iterator[CutState]:
    """For each operation whose sequence number is in ``cuts``: the state of a cut right
    after it, in each of the ``MODES`` (built in one pass over the log)."""
    disk = Disk(initial)
    for op in ops:
        disk.apply(op)
        if op.seq in cuts:
            unsynced = {path: len(pending) for path, pending in disk.pending.items()}
            yield CutState(op, "dropped", disk.dropped(), disk.version, unsynced)
            yield CutState(op, "partial", disk.partial(rng), None, unsynced)


def database_file(path: str, database: str) -> bool:
    """Whether ``path`` (on the mount: "/name") is SQLite database ``database``, its WAL or its
    rollback journal (its ``-shm`` is left out: nothing in it outlives a crash)."""
    return path.lstrip("/") in (database, f"{database}-wal", f"{database}-journal")


def snapshot(folder: Path, database: str) -> dict[str, bytes]:
    """The files of ``database`` in ``folder``, by their paths on the mount."""
    return {
        f"/{file.name}": file.read_bytes()
        for file in folder.iterdir()
        if file.is_file() and database_file(file.name, database)
    }


def materialize(files: dict[str, bytes], folder: Path, database: str) -> None:
    """Replace the files of ``database`` in ``folder`` (and its ``-shm``) by ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if database_file(old.name, database) or old.name == f"{database}-shm":
            old.unlink()
    for path, content in files.items():
        (folder / path.lstrip("/")).write_bytes(content)
