"""Participation: when the board joins the federation, and the session's thread.

``decide`` is the rule, from typed inputs only: a window is open, this window did not end
with the server unreachable, no refusal is still being waited out, and enough windows were
labelled since the last finished session. ``Participation`` applies it at each
housekeeping turn and runs a ``Session`` (sleepfed.board.federation.session) in a thread;
``SessionRun`` records what the session does in the buffer as it happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sleepfed.board.buffer.board_state import BoardState
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.federation.outcome import SessionOutcome
from sleepfed.board.nights.schedule import still_waiting
from sleepfed.board.service import clock
from sleepfed.board.service.config import AgentConfig, FederationConfig

if TYPE_CHECKING:
    from sleepfed.board.federation.session import Session

log = logging.getLogger("sleepfed.agent")


@dataclass(frozen=True)
class Join:
    """Start a session for the window ``[window_start, window_end)``."""

    window_start: float
    window_end: float
    labelled: int  # labelled windows now (recorded once the session finishes)


@dataclass(frozen=True)
class Wait:
    """Not now; ``next_window_at`` is set when no window is open."""

    next_window_at: float | None = None


def decide(
    fed: FederationConfig,
    timezone: ZoneInfo,
    state: BoardState,
    now: float,
    labelled_windows: Callable[[], int],
) -> Join | Wait:
    """Whether to start a session at ``now`` (``labelled_windows`` is asked last, if at all)."""
    window = fed.window.current(now, timezone)
    if window is None:
        return Wait(next_window_at=fed.window.next_start(now, timezone))
    start, end = window
    if state.closed_window_start == start:
        return Wait()  # the server stayed unreachable until this window's end
    if still_waiting(state.refused_until, now, fed.refused_retry_seconds):
        return Wait()  # refused (key not registered, revoked, wrong CA): wait before asking again
    labelled = labelled_windows()
    if labelled - state.labelled_at_last_session < fed.min_new_labelled_windows:
        return Wait()
    return Join(start, end, labelled)


class SessionRun:
    """One session, run in its thread. What it records goes through connections of its own:
    visible at once in ``sleepfed-agent status``, not only when the session ends."""

    def __init__(
        self,
        fed: FederationConfig,
        buffer_path: Path,
        state_dir: Path,
        join: Join,
        stop: threading.Event,
        run_finished_before: str | None,
    ) -> None:
        from sleepfed.board.federation.session import Session

        self.fed = fed
        self.buffer_path = buffer_path
        self.join = join
        self.run_finished_before = run_finished_before
        self.session: Session = Session(
            fed,
            buffer_path,
            state_dir,
            join.window_end,
            stop,
            self.finished,
            self.on_retry,
            self.on_node_fault,
        )

    def finished(self) -> bool:
        """Whether the ClientApp stored a run's final model since the session started."""
        reader = Buffer(self.buffer_path, readonly=True)
        try:
            return reader.board_state().run_finished != self.run_finished_before
        finally:
            reader.close()

    def _record(self, counters: dict[str, int], **state: object) -> None:
        writer = Buffer(self.buffer_path)
        try:
            writer.bump_counters(counters)
            writer.set_state(**state)
        finally:
            writer.close()

    def on_retry(self, attempt: int, sleep: float, why: str) -> None:
        self._record(
            {"federation_retries": 1},
            last_retry={"attempt": attempt, "at": time.time(), "sleep": sleep, "error": why[:200]},
            session_attempts=list(self.session.attempt_times),
        )

    def on_node_fault(self, counter: str, detail: str) -> None:
        self._record(
            {counter: 1},
            last_node_fault={"counter": counter, "at": time.time(), "detail": detail},
        )

    def run(self) -> None:
        outcome = SessionOutcome.ERROR
        try:
            outcome = self.session.run()
        except Exception:
            log.exception("participation session crashed")
        attempts = self.session.attempt_times
        log.info(
            "participation session ended: %s (attempts at %s)",
            outcome,
            ", ".join(f"{t:.1f}" for t in attempts),
        )
        self._ended(outcome, attempts)

    def _ended(self, outcome: SessionOutcome, attempts: list[float]) -> None:
        values: dict[str, object] = {
            "last_session_outcome": outcome,
            "last_session_ended_at": time.time(),
            "last_session_attempts": attempts,
        }
        if outcome == SessionOutcome.FINISHED:
            values["labelled_at_last_session"] = self.join.labelled
        if outcome == SessionOutcome.GAVE_UP:
            values["closed_window_start"] = self.join.window_start
        if outcome == SessionOutcome.REFUSED:
            values["refused_until"] = clock.now() + self.fed.refused_retry_seconds
        writer = Buffer(self.buffer_path)
        try:
            writer.set_state(**values)
            writer.bump_counters({outcome.counter: 1})
        finally:
            writer.close()


class Participation:
    """At each housekeeping turn: start a session when ``decide`` says so (one at a time)."""

    def __init__(self, config: AgentConfig, buffer: Buffer, stop: threading.Event) -> None:
        self.config = config
        self.buffer = buffer
        self.stop = stop
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """A session thread was started and not yet found ended."""
        return self.thread is not None

    def tick(self) -> None:
        fed = self.config.federation
        if fed is None:
            return
        if self.thread is not None:
            if self.thread.is_alive():
                return
            self.thread = None
        now = clock.now()
        state = self.buffer.board_state()
        decision = decide(fed, self.config.timezone, state, now, self.buffer.labelled_window_count)
        if isinstance(decision, Wait):
            if decision.next_window_at is not None:
                self.buffer.set_state(next_window_at=decision.next_window_at)
            return
        run = SessionRun(
            fed,
            self.config.buffer_path,
            self.config.state_dir,
            decision,
            self.stop,
            state.run_finished,
        )
        self.buffer.set_state(session_started_at=now, session_window_end=decision.window_end)
        self.thread = threading.Thread(target=run.run, name="participation", daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)
