"""How a participation session ends.

The values are stored in the buffer (state ``last_session_outcome``, counters
``sessions_<outcome>``) and shown by ``sleepfed-agent status`` and the metrics (label
``outcome``): they never change.
"""

from __future__ import annotations

from enum import StrEnum


class SessionOutcome(StrEnum):
    FINISHED = "finished"  # the run's final model reached the board
    SHUTDOWN = "shutdown"  # the daemon stopped
    GAVE_UP = "gave_up"  # transient errors until the window's end
    REFUSED = "refused"  # a permanent error: key not registered or revoked, wrong CA
    ERROR = "error"  # the session crashed
    IDLE = "idle"  # the node ran for session_idle_seconds without the run finishing
    WINDOW_END = "window_end"  # the window closed first

    @property
    def counter(self) -> str:
        """The buffer counter of sessions that ended so."""
        return f"sessions_{self.value}"


# The endings without the run finishing, in the order the metrics list them.
FAILED_OUTCOMES: tuple[SessionOutcome, ...] = (
    SessionOutcome.GAVE_UP,
    SessionOutcome.REFUSED,
    SessionOutcome.ERROR,
    SessionOutcome.IDLE,
    SessionOutcome.WINDOW_END,
)
