"""Joining the federation: one session per participation window.

The board's Flower node is a supervised child process (``flower-supernode``); Flower has no
public API to run a SuperNode in-process, and a child keeps flwr, grpc and scikit-learn out
of the daemon's memory between windows. The SuperNode starts a fresh ClientApp process
(sleepfed.board.training.client_app) for each message, pointed at this board's buffer.

Connection attempts are wrapped in tenacity: exponential backoff with full jitter, capped,
retried only on transient errors (server unreachable, node lost), given up at once on
configuration or authentication errors, and never past the window's end. Which errors are
which: sleepfed.board.federation.server_probe (the server) and
sleepfed.board.federation.supernode (what the node's output says).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
)

from sleepfed.board.federation.outcome import SessionOutcome
from sleepfed.board.federation.server_probe import PermanentError, TransientError, probe_server
from sleepfed.board.federation.supernode import (
    PERMANENT_MARKERS,
    log_tail,
    node_faults,
    supernode_command,
    whole_lines_from,
)
from sleepfed.board.service import clock
from sleepfed.board.service.config import FederationConfig
from sleepfed.board.training.code_guard import guarded_environment
from sleepfed.common import backoff
from sleepfed.common.flower_process import flower_environment, stop_process_group

log = logging.getLogger("sleepfed.federation")

STOP_GRACE_SECONDS = 10.0
# After the ClientApp stored the run's final model, the node still has to send its reply, and
# the ServerApp to collect it: the SuperLink answers a reply asked for after its node ended
# with "node unavailable" (sleepfed.server.app.round_loop).
FINISH_GRACE_SECONDS = 15.0


class Session:
    """One participation session: retries, the supervised SuperNode, and its end."""

    def __init__(
        self,
        config: FederationConfig,
        buffer_path: Path,
        state_dir: Path,
        deadline: float,
        stop: threading.Event,
        finished: Callable[[], bool],
        on_retry: Callable[[int, float, str], None] = lambda attempt, sleep, why: None,
        on_node_fault: Callable[[str, str], None] = lambda counter, detail: None,
    ) -> None:
        self.config = config
        self.buffer_path = buffer_path
        self.state_dir = state_dir
        self.deadline = deadline
        self.stop = stop
        self.finished = finished
        self.on_retry = on_retry
        self.on_node_fault = on_node_fault
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "supernode.log"
        self.attempt_times: list[float] = []
        self.first_refusal: float | None = None
        # Attempts before the one whose node lost its server: the backoff starts afresh there.
        self.backoff_from = 0

    def run(self) -> SessionOutcome:
        """Returns how the session ended: finished, window_end, idle, shutdown, gave_up
        (transient errors until the window's end) or refused (permanent error)."""
        # the window's end is the board's wall clock (clock.now), which a test may step
        budget = self.deadline - clock.now()
        if budget <= 0:
            return SessionOutcome.WINDOW_END

        try:
            return SessionOutcome(self._retrying(budget)(self._attempt))
        except TransientError as error:
            if self.stop.is_set():
                return SessionOutcome.SHUTDOWN
            log.error(
                "federation gave up for this window: %s", error, extra={"ERROR_CLASS": "transient"}
            )
            return SessionOutcome.GAVE_UP
        except PermanentError as error:
            log.error(
                "federation refused, not retrying in this window: %s",
                error,
                extra={"ERROR_CLASS": "permanent"},
            )
            return SessionOutcome.REFUSED

    def _retrying(self, budget: float) -> Retrying:
        """Retry transient errors only, on the board's one backoff policy, never past the
        window's end; each wait can be cut short by ``stop``."""
        return Retrying(
            retry=retry_if_exception_type(TransientError),
            wait=self._wait,
            stop=stop_before_delay(budget),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        # the board's one policy (common.backoff), restarted after a node lost its server
        return backoff.delay(
            state.attempt_number - self.backoff_from,
            self.config.retry_initial_seconds,
            self.config.retry_max_seconds,
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "federation attempt=%d failed (%s); retrying in %.1fs (backoff step %d)",
            state.attempt_number,
            error,
            sleep,
            state.attempt_number - self.backoff_from,
            extra={"ERROR_CLASS": "transient"},
        )
        self.on_retry(state.attempt_number, sleep, str(error))

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise TransientError("shutdown while waiting to retry")

    def _attempt(self) -> SessionOutcome:
        self.attempt_times.append(time.time())
        if self.stop.is_set():
            return SessionOutcome.SHUTDOWN
        probe_server(self.config)
        return self._supervise()

    def _supervise(self) -> SessionOutcome:
        log_start = self._start_node()
        started_at = last_check = time.time()
        finished_at: float | None = None
        lost_since: float | None = None
        read_to = log_start  # how far this attempt's SuperNode output has been scanned
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    return self._node_exited(code, log_start)
                if finished_at is None and self.finished():
                    finished_at = time.time()
                if finished_at is not None and time.time() - finished_at >= FINISH_GRACE_SECONDS:
                    return SessionOutcome.FINISHED
                if self.stop.is_set():
                    return SessionOutcome.SHUTDOWN
                if clock.now() >= self.deadline:
                    return SessionOutcome.WINDOW_END
                now = time.time()
                if now - started_at > self.config.session_idle_seconds:
                    return SessionOutcome.IDLE
                # After the final round the server may leave: only watch it until then.
                if finished_at is None and now - last_check >= self.config.server_check_seconds:
                    last_check = now
                    read_to = self._scan_node_output(read_to)
                    lost_since = self._check_server(lost_since)
                self.stop.wait(0.5)
        finally:
            self.terminate()

    def _start_node(self) -> int:
        """Start this attempt's SuperNode, its output appended to ``supernode.log``.
        Returns the log's offset where this attempt's output begins."""
        command = supernode_command(self.config, self.buffer_path)
        flwr_home = self.state_dir / "flwr"
        flwr_home.mkdir(parents=True, exist_ok=True)
        log.info("federation starting node: %s", " ".join(command))
        with self.log_path.open("ab") as out:
            log_start = out.tell()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=guarded_environment(flower_environment(flwr_home), self.state_dir),
                start_new_session=True,
            )
        return log_start

    def _node_exited(self, code: int, log_start: int) -> SessionOutcome:
        """FINISHED if the run's final model is stored; else raises TransientError, or
        PermanentError when the node was refused (past the activation patience)."""
        tail = log_tail(self.log_path, log_start)
        if self.finished():
            return SessionOutcome.FINISHED
        if not any(marker in tail for marker in PERMANENT_MARKERS):
            raise TransientError(f"node exited with {code}")
        # Refused, unless the server itself went away meanwhile.
        probe_server(self.config)
        # Flower refuses to activate a node whose previous connection it still counts as
        # online (until two 30-s heartbeats are missed: e.g. the server restarted before the
        # node could say goodbye). Such a refusal looks like an unknown or revoked key (exit
        # code 305), so it is retried for federation.activation_patience_seconds (75 s)
        # before the session counts as refused.
        now = time.time()
        self.first_refusal = self.first_refusal or now
        if now - self.first_refusal < self.config.activation_patience_seconds:
            raise TransientError(
                f"node refused (exit {code}); retrying: its previous "
                "connection may still count as online"
            )
        raise PermanentError(f"node exited with {code}: {tail[-300:].strip()}")

    def _check_server(self, lost_since: float | None) -> float | None:
        """Probe the server while the node runs. Flower's own node retries a lost server
        forever (and can wedge), so once the server has been unreachable for
        ``server_lost_seconds`` the node is stopped and the session backs off (tenacity)
        like any other transient error. Returns when the server was first missed, or None."""
        try:
            probe_server(self.config)
        except TransientError as error:
            now = time.time()
            if lost_since is None:
                log.warning("federation: server unreachable while the node runs (%s)", error)
                return now
            if now - lost_since >= self.config.server_lost_seconds:
                self.backoff_from = len(self.attempt_times) - 1
                raise TransientError(
                    f"server lost for {now - lost_since:.0f}s ({error}); node stopped"
                ) from None
            return lost_since
        if lost_since is not None:
            log.info("federation: server reachable again after %.0fs", time.time() - lost_since)
        return None

    def _scan_node_output(self, offset: int) -> int:
        """Count what the running SuperNode reported since ``offset``; a node whose pulling
        ended is stopped, and the session retries (a new node pulls again)."""
        complete = whole_lines_from(self.log_path, offset)
        if complete is None:
            return offset
        lost, wedged = node_faults(complete.decode("utf-8", "replace"))
        if lost:
            log.warning(
                "federation: the node failed to send %d reply(ies) to the server; "
                "those rounds go on without this board",
                lost,
                extra={"ERROR_CLASS": "transient"},
            )
            self.on_node_fault("node_replies_lost", f"{lost} reply(ies) not sent")
        if wedged:
            self.on_node_fault(
                "node_restarts", "the server failed a pull; the node stopped pulling"
            )
            raise TransientError("the server failed the node's pull (HTTP 500); node restarted")
        return offset + len(complete)

    def terminate(self) -> None:
        process, self.process = self.process, None
        stop_process_group(process, STOP_GRACE_SECONDS)
