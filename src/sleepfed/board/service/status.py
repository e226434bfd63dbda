"""``sleepfed-agent status``: what the board holds and how it is doing, read from its buffer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from sleepfed.board.buffer.board_state import BoardState
from sleepfed.board.buffer.counter_classes import failure_classes, rejection_classes
from sleepfed.board.buffer.model_tables import PersonalModelRecord
from sleepfed.board.buffer.store import Buffer, BufferCounts
from sleepfed.board.federation.outcome import SessionOutcome
from sleepfed.board.service import clock
from sleepfed.board.service.buffer_keeper import unwritable_reason
from sleepfed.board.service.config import AgentConfig, BleSourceConfig
from sleepfed.board.service.status_problems import recovered_problem

# Exit codes of ``sleepfed-agent status`` (2 is a configuration error, as everywhere).
EXIT_HEALTHY = 0
EXIT_NOT_RUNNING = 1  # no daemon (or no buffer yet): nothing is being collected
EXIT_DEGRADED = 3  # the daemon runs but a source is down or the last session failed
EXIT_BUFFER_UNREADABLE = 4  # the buffer is corrupt, not ours, of a newer agent, or unreadable
# A recovered buffer (sleepfed.board.buffer.buffer_recovery) is a problem this long after.
RECOVERED_SHOWN_SECONDS = 86400.0
SESSION_PROBLEMS = {
    SessionOutcome.REFUSED: (
        "the server refused this board (key not registered or revoked, or wrong CA)"
    ),
    SessionOutcome.GAVE_UP: "the server stayed unreachable until the window's end",
    SessionOutcome.ERROR: "the session crashed (see the agent's log)",
}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _BufferSnapshot:
    """What ``status`` reads from the buffer, in one read-only connection."""

    counts: BufferCounts
    state: BoardState
    counters: dict[str, int]
    latest_model: tuple[int, int, str, bytes] | None
    predictions: dict[str, tuple[int, float, str, str]]
    personal: PersonalModelRecord | None
    reports: dict[str, str]
    last_night: str | None
    last_info: dict[str, object] | None
    labelled: list[tuple[str, float, list[float], int | None]]
    battery: dict[str, tuple[float, float]]


def _read_buffer(config: AgentConfig) -> _BufferSnapshot:
    buffer = Buffer(config.buffer_path, readonly=True)
    try:
        nights = buffer.night_names()
        last_night = nights[-1] if nights else None
        return _BufferSnapshot(
            counts=buffer.counts(),
            state=buffer.board_state(),
            counters=buffer.counters(),
            latest_model=buffer.latest_model(),
            predictions=buffer.latest_predictions(),
            personal=buffer.personal_model(),
            reports=buffer.night_reports(),
            last_night=last_night,
            last_info=buffer.night_info(last_night) if last_night else None,
            labelled=buffer.windows(last_night, labelled_only=True) if last_night else [],
            battery=buffer.latest_battery(clock.now() - BATTERY_SHOWN_SECONDS),
        )
    finally:
        buffer.close()


def collect(config: AgentConfig) -> dict[str, Any]:
    snapshot = _read_buffer(config)
    state = snapshot.state
    alive = _pid_alive(state.daemon_pid)
    running = alive and clock.now() - state.heartbeat_at < 30
    health, problems = _health(running, state, snapshot.battery)
    card = unwritable_reason(config.buffer_path, None) if alive else None
    if alive and (card is not None or not running):
        # alive but not writing: the card went read-only, its folder went away, or it hangs
        reason = card or "see its log"
        running, health = True, "degraded"
        problems = [
            f"the daemon (pid {state.daemon_pid}) has not written its buffer for "
            f"{clock.now() - state.heartbeat_at:.0f} s: {reason}"
        ]
    recovered = state.buffer_recovered
    if recovered and clock.now() - float(recovered.get("at", 0)) < RECOVERED_SHOWN_SECONDS:
        problems.append(recovered_problem(recovered))
        health = "degraded" if health == "ok" else health
    return {
        "board": config.board_id,
        "health": health,
        "problems": problems,
        "daemon": {
            "running": running,
            "pid": state.daemon_pid if running else None,
            "health": state.health if running else "not running",
            "sources_connected": state.sources_connected,
        },
        "buffer": _buffer_section(config, snapshot.counts) | {"recovered": recovered},
        "movement": movement_sources(config),
        # each source's newest battery level of the last two days (BLE 0x2A19, serial BAT)
        "battery": {s: {"percent": v, "at": ts} for s, (v, ts) in snapshot.battery.items()},
        **_counter_sections(snapshot.counters),
        "rounds": _rounds_section(snapshot),
        "federation": _federation_section(config, state, running),
        "model": {
            "version": snapshot.latest_model[0] if snapshot.latest_model else None,
            "round": snapshot.latest_model[1] if snapshot.latest_model else None,
            # the prior of the night estimates (sleepfed.model.features.estimated_efficiency)
            "population_good_share": state.population_good_share,
            "personal": _personal_section(snapshot.personal),
        },
        "last_night": _last_night_section(snapshot),
    }


BATTERY_SHOWN_SECONDS = 2 * 86400.0
LOW_BATTERY_PERCENT = 10.0


def movement_sources(config: AgentConfig) -> dict[str, str]:
    """Where each configured device's movement comes from: ``pmd`` (Polar accelerometer),
    ``characteristic``, ``serial`` (MOV lines, if the device sends them) or ``none`` (a plain
    heart-rate strap: its nights are predicted by the movement-free head)."""
    found: dict[str, str] = {}
    for source in config.sources:
        if isinstance(source, BleSourceConfig):
            for device in source.devices:
                found[f"{source.name}/{device.name}"] = (
                    "pmd"
                    if device.pmd_acc_hz
                    else "characteristic"
                    if device.movement_characteristic
                    else "none"
                )
        else:
            found[source.name] = "serial"
    return found


def _buffer_section(config: AgentConfig, counts: BufferCounts) -> dict[str, Any]:
    return {
        "path": str(config.buffer_path),
        "readings": counts.readings,
        "stage_labels": counts.stage_labels,
        "nights": counts.nights,
        "windows": counts.windows,
        "labelled_windows": counts.labelled_windows,
        "used_bytes": counts.used_bytes,
        "cap_bytes": config.max_bytes,
    }


def _counter_sections(counters: dict[str, int]) -> dict[str, Any]:
    """The counters by kind: rejected and accepted readings (prefix dropped), the rest, and
    the named classes of rejections and failures (zeros included)."""
    return {
        "rejected": {
            k[len("rejected_") :]: v for k, v in counters.items() if k.startswith("rejected_")
        },
        "accepted": {
            k[len("accepted_") :]: v for k, v in counters.items() if k.startswith("accepted_")
        },
        "counters": {
            k: v for k, v in counters.items() if not k.startswith(("rejected_", "accepted_"))
        },
        "rejection_classes": rejection_classes(counters),
        "failure_classes": failure_classes(counters),
    }


def _rounds_section(snapshot: _BufferSnapshot) -> dict[str, Any]:
    counters, state, latest = snapshot.counters, snapshot.state, snapshot.latest_model
    return {
        "joined": counters.get("rounds_trained", 0),
        "evaluated": counters.get("rounds_evaluated", 0),
        "last_global_round": latest[1] if latest else None,
        "last_train_round": state.last_train_round,
        "last_trained_from": state.last_trained_from,
        "last_train_at": state.last_train_at,
        "retries": counters.get("federation_retries", 0),
        "last_retry": state.last_retry,
    }


def _federation_section(config: AgentConfig, state: BoardState, running: bool) -> dict[str, Any]:
    fed = config.federation
    return {
        "server": fed.server if fed else None,
        "window": str(fed.window) if fed else None,
        "session_running": state.session_running and running,
        "last_participation_at": state.last_participation_at,
        "last_session_outcome": state.last_session_outcome,
        "next_window_at": state.next_window_at,
    }


def _personal_section(record: PersonalModelRecord | None) -> dict[str, Any] | None:
    """The person's own model (sleepfed.board.nights.personal_model), without its arrays."""
    if record is None:
        return None
    return {
        "base_version": record.base_version,
        "used": record.kept,
        "train_windows": record.train_windows,
        "held_out_windows": record.held_out_windows,
        "held_out_loss": {"personal": record.personal_loss, "global": record.global_loss},
        "held_out_accuracy": {
            "personal": record.personal_accuracy,
            "global": record.global_accuracy,
        },
        "made_at": record.made_at,
    }


def _last_night_section(snapshot: _BufferSnapshot) -> dict[str, Any]:
    last_night, info, labelled = snapshot.last_night, snapshot.last_info, snapshot.labelled
    prediction = snapshot.predictions.get(last_night) if last_night else None
    return {
        "night": last_night,
        "predicted_efficiency": prediction[1] if prediction else None,
        "predicted_quality": prediction[2] if prediction else None,
        "model_version": prediction[0] if prediction else None,
        "model_kind": prediction[3] if prediction else None,  # global or personal
        # full, or no_movement: the night had no movement reading (a plain heart-rate strap)
        "model_head": prediction[4] if prediction else None,
        "movement": bool(info.get("movement", 1)) if info else None,
        "reference_efficiency": info.get("reference_efficiency") if info else None,
        "reference_good_share": (
            sum(int(w[3] or 0) for w in labelled) / len(labelled) if labelled else None
        ),
        "reported_quality": snapshot.reports.get(last_night) if last_night else None,
    }


def _health(
    running: bool, state: BoardState, battery: dict[str, tuple[float, float]]
) -> tuple[str, list[str]]:
    """``ok``, ``degraded`` or ``not running``, and what is wrong in words."""
    if not running:
        return "not running", ["the daemon is not running (no heartbeat in 30 s)"]
    problems = []
    if state.health != "ok":
        problems.append(f"daemon health {state.health}: sources {state.sources_connected}")
    outcome = state.last_session_outcome
    if outcome is not None and outcome in SESSION_PROBLEMS:
        problems.append(f"last participation session {outcome}: {SESSION_PROBLEMS[outcome]}")
    problems += [
        f"battery of {source} at {percent:.0f}%: charge it or change its cell"
        for source, (percent, _) in sorted(battery.items())
        if percent <= LOW_BATTERY_PERCENT
    ]
    return ("degraded" if problems else "ok"), problems


def exit_code(status: dict[str, Any]) -> int:
    return {"ok": EXIT_HEALTHY, "degraded": EXIT_DEGRADED}.get(status["health"], EXIT_NOT_RUNNING)


def as_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
