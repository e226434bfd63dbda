"""The replay loop: readings out as protocol lines, in chunks, at a given rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from sleepfed.board.sources.protocol import Reading, format_reading

DEFAULT_CHUNK = 256


def replay(
    readings: Iterable[Reading],
    write: Callable[[bytes], None],
    rate: float | None,
    *,
    with_checksum: bool = False,
    drain: Callable[[], object] | None = None,
    limit: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write ``readings`` as protocol lines; returns how many were written.

    ``rate`` is readings per second (None: as fast as the reader takes them). Lines go out
    in chunks (about 50 per second when paced); ``drain`` runs between chunks so that the
    agent's ACKs are read and it never blocks writing them.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    per_chunk = chunk_size if rate is None else max(1, min(chunk_size, int(rate / 50.0)))
    started = clock()
    sent = 0
    pending: list[bytes] = []

    def flush() -> None:
        nonlocal sent
        if not pending:
            return
        write(b"".join(pending))
        sent += len(pending)
        pending.clear()
        if drain is not None:
            drain()
        if rate is not None:
            ahead = started + sent / rate - clock()
            if ahead > 0:
                sleep(ahead)

    for reading in readings:
        if limit is not None and sent + len(pending) >= limit:
            break
        pending.append(format_reading(reading, with_checksum=with_checksum))
        if len(pending) >= per_chunk:
            flush()
    flush()
    return sent
