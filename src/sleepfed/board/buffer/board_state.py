"""The board's state: what the daemon, its participation sessions and the ClientApp record
in the buffer's ``state`` table (one JSON value per key) for each other and for ``status``
and the metrics.

Writers update only their own keys (``Buffer.set_state(key=value, ...)``: several processes
write at once); readers get the whole state as one typed ``BoardState``
(``Buffer.board_state()``). Both go through this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sleepfed.board.federation.outcome import SessionOutcome


@dataclass(frozen=True)
class BoardState:
    # the daemon
    daemon_pid: int = 0  # 0 once it stopped
    daemon_started_at: float | None = None
    health: str | None = None  # starting, ok, degraded, stopped
    sources_connected: str | None = None  # "connected/configured"
    heartbeat_at: float = 0.0
    # participation (the daemon and its session thread)
    session_running: bool = False
    next_window_at: float | None = None
    session_started_at: float | None = None
    session_window_end: float | None = None
    session_attempts: tuple[float, ...] = ()
    last_retry: dict[str, Any] | None = None
    last_node_fault: dict[str, Any] | None = None
    last_session_outcome: SessionOutcome | None = None
    last_session_ended_at: float | None = None
    last_session_attempts: tuple[float, ...] = ()
    labelled_at_last_session: int = 0
    closed_window_start: float | None = None  # the window the server stayed away for
    refused_until: float = 0.0
    # the ClientApp
    last_train_round: int | None = None
    # the global round (FedBuff: version) of the model the board last trained from; 0 for the
    # initial model
    last_trained_from: int | None = None
    last_train_at: float | None = None
    model_version: int | None = None
    model_round: int | None = None
    last_participation_at: float | None = None
    run_finished: str | None = None  # the run whose final model the board holds
    population_good_share: float | None = None
    # predictions
    unusable_model_version: int | None = None
    # the last corrupt buffer moved aside (sleepfed.board.buffer.buffer_recovery)
    buffer_recovered: dict[str, Any] | None = None

    @classmethod
    def decode(cls, stored: Mapping[str, Any]) -> BoardState:
        """From the decoded JSON values by key (missing keys keep their defaults)."""

        def opt(key: str, kind: type[Any]) -> Any:
            value = stored.get(key)
            return None if value is None else kind(value)

        share = stored.get("population_good_share")
        return cls(
            daemon_pid=int(stored.get("daemon_pid") or 0),
            daemon_started_at=opt("daemon_started_at", float),
            health=opt("health", str),
            sources_connected=opt("sources_connected", str),
            heartbeat_at=float(stored.get("heartbeat_at") or 0),
            session_running=bool(stored.get("session_running")),
            next_window_at=opt("next_window_at", float),
            session_started_at=opt("session_started_at", float),
            session_window_end=opt("session_window_end", float),
            session_attempts=tuple(stored.get("session_attempts") or ()),
            last_retry=opt("last_retry", dict),
            last_node_fault=opt("last_node_fault", dict),
            last_session_outcome=_outcome(stored.get("last_session_outcome")),
            last_session_ended_at=opt("last_session_ended_at", float),
            last_session_attempts=tuple(stored.get("last_session_attempts") or ()),
            labelled_at_last_session=int(stored.get("labelled_at_last_session") or 0),
            closed_window_start=opt("closed_window_start", float),
            refused_until=float(stored.get("refused_until") or 0),
            last_train_round=opt("last_train_round", int),
            last_trained_from=opt("last_trained_from", int),
            last_train_at=opt("last_train_at", float),
            model_version=opt("model_version", int),
            model_round=opt("model_round", int),
            last_participation_at=opt("last_participation_at", float),
            run_finished=opt("run_finished", str),
            # a number or nothing (the predictions then count nights at p >= 0.5)
            population_good_share=float(share) if isinstance(share, int | float) else None,
            unusable_model_version=opt("unusable_model_version", int),
            buffer_recovered=opt("buffer_recovered", dict),
        )


def _outcome(value: object) -> SessionOutcome | None:
    try:
        return SessionOutcome(value) if isinstance(value, str) else None  # None: none yet
    except ValueError:
        return None


STATE_KEYS = frozenset(f.name for f in fields(BoardState))


def encode_state(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(key, JSON)`` rows for the ``state`` table; only ``BoardState``'s keys are known."""
    unknown = sorted(values.keys() - STATE_KEYS)
    if unknown:
        raise KeyError(f"not part of the board's state: {', '.join(unknown)}")
    return [(key, json.dumps(value)) for key, value in values.items()]
