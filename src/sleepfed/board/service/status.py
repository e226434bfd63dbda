"""``sleepfed-agent status``: what the board holds and how it is doing, read from its buffer."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from sleepfed.board.buffer.board_state import BoardState
from sleepfed.board.buffer.counter_classes import failure_classes, rejection_classes
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.federation.outcome import SessionOutcome
from sleepfed.board.service import clock
from sleepfed.board.service.config import AgentConfig

# Exit codes of ``sleepfed-agent status`` (2 is a configuration error, as everywhere).
EXIT_HEALTHY = 0
EXIT_NOT_RUNNING = 1  # no daemon (or no buffer yet): nothing is being collected
EXIT_DEGRADED = 3  # the daemon runs but a source is down or the last session failed
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


def collect(config: AgentConfig) -> dict[str, Any]:
    buffer = Buffer(config.buffer_path, readonly=True)
    try:
        counts = buffer.counts()
        state = buffer.board_state()
        counters = buffer.counters()
        latest = buffer.latest_model()
        predictions = buffer.latest_predictions()
        reports = buffer.night_reports()
        nights = buffer.night_names()
        last_night = nights[-1] if nights else None
        last_info = buffer.night_info(last_night) if last_night else None
        labelled = buffer.windows(last_night, labelled_only=True) if last_night else []
    finally:
        buffer.close()
    pid = state.daemon_pid
    running = _pid_alive(pid) and clock.now() - state.heartbeat_at < 30
    prediction = predictions.get(last_night) if last_night else None
    fed = config.federation
    health, problems = _health(running, state)
    return {
        "board": config.board_id,
        "health": health,
        "problems": problems,
        "daemon": {
            "running": running,
            "pid": pid if running else None,
            "health": state.health if running else "not running",
            "sources_connected": state.sources_connected,
        },
        "buffer": {
            "path": str(config.buffer_path),
            "readings": counts.readings,
            "stage_labels": counts.stage_labels,
            "nights": counts.nights,
            "windows": counts.windows,
            "labelled_windows": counts.labelled_windows,
            "used_bytes": counts.used_bytes,
            "cap_bytes": config.max_bytes,
        },
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
        "rounds": {
            "joined": counters.get("rounds_trained", 0),
            "evaluated": counters.get("rounds_evaluated", 0),
            "last_global_round": latest[1] if latest else None,
            "last_train_round": state.last_train_round,
            "last_train_at": state.last_train_at,
            "retries": counters.get("federation_retries", 0),
            "last_retry": state.last_retry,
        },
        "federation": {
            "server": fed.server if fed else None,
            "window": str(fed.window) if fed else None,
            "session_running": state.session_running and running,
            "last_participation_at": state.last_participation_at,
            "last_session_outcome": state.last_session_outcome,
            "next_window_at": state.next_window_at,
        },
        "model": {
            "version": latest[0] if latest else None,
            "round": latest[1] if latest else None,
            # the prior of the night estimates (sleepfed.model.features.estimated_efficiency)
            "population_good_share": state.population_good_share,
        },
        "last_night": {
            "night": last_night,
            "predicted_efficiency": prediction[1] if prediction else None,
            "predicted_quality": prediction[2] if prediction else None,
            "model_version": prediction[0] if prediction else None,
            "reference_efficiency": last_info.get("reference_efficiency") if last_info else None,
            "reference_good_share": (
                sum(int(w[3] or 0) for w in labelled) / len(labelled) if labelled else None
            ),
            "reported_quality": reports.get(last_night) if last_night else None,
        },
    }


def _health(running: bool, state: BoardState) -> tuple[str, list[str]]:
    """``ok``, ``degraded`` or ``not running``, and what is wrong in words."""
    if not running:
        return "not running", ["the daemon is not running (no heartbeat in 30 s)"]
    problems = []
    if state.health != "ok":
        problems.append(f"daemon health {state.health}: sources {state.sources_connected}")
    outcome = state.last_session_outcome
    if outcome is not None and outcome in SESSION_PROBLEMS:
        problems.append(f"last participation session {outcome}: {SESSION_PROBLEMS[outcome]}")
    return ("degraded" if problems else "ok"), problems


def exit_code(status: dict[str, Any]) -> int:
    return {"ok": EXIT_HEALTHY, "degraded": EXIT_DEGRADED}.get(status["health"], EXIT_NOT_RUNNING)


def _when(value: float | None) -> str:
    if not value:
        return "never"
    return datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")


def render(status: dict[str, Any]) -> str:
    d, b, f, m, n = (status[k] for k in ("daemon", "buffer", "federation", "model", "last_night"))
    cap = f"{b['cap_bytes'] / 1e6:.1f} MB" if b["cap_bytes"] else "none"
    next_window = (
        _when(f["next_window_at"]) if f["next_window_at"] else "open now" if f["window"] else "n/a"
    )
    r = status["rounds"]
    rejected = {k: v for k, v in status["rejection_classes"].items() if v}
    failures = {k: v for k, v in status["failure_classes"].items() if v}
    zero_rejected = len(status["rejection_classes"]) - len(rejected)
    zero_failures = len(status["failure_classes"]) - len(failures)
    lines = [
        f"board           {status['board']}",
        f"health          {status['health'].upper()}"
        + "".join(f"\n  problem       {p}" for p in status["problems"]),
        f"daemon          {'running pid ' + str(d['pid']) if d['running'] else 'NOT RUNNING'}"
        f"  health={d['health']}  sources={d['sources_connected']}",
        f"buffer          {b['readings']} readings, {b['stage_labels']} stage labels, "
        f"{b['nights']} nights, {b['windows']} windows ({b['labelled_windows']} labelled)",
        f"buffer size     {b['used_bytes'] / 1e6:.2f} MB used, cap {cap}",
        "accepted        "
        + (", ".join(f"{k}={v}" for k, v in sorted(status["accepted"].items())) or "none"),
        "rejected        "
        + ", ".join(
            [*(f"{k}={v}" for k, v in sorted(rejected.items())), f"{zero_rejected} classes 0"]
        ),
        "failures        "
        + ", ".join(
            [*(f"{k}={v}" for k, v in sorted(failures.items())), f"{zero_failures} classes 0"]
        ),
        "counters        "
        + (
            ", ".join(
                f"{k}={v}"
                for k, v in sorted(status["counters"].items())
                if k not in status["failure_classes"]
            )
            or "none"
        ),
        f"rounds          joined {r['joined']}, evaluated {r['evaluated']}, "
        f"last trained round {r['last_train_round'] or '-'} at {_when(r['last_train_at'])}, "
        f"{r['retries']} retries",
        f"federation      server={f['server']} window={f['window']} "
        f"session={'running' if f['session_running'] else 'idle'} last={f['last_session_outcome']}",
        f"participation   last {_when(f['last_participation_at'])}, next window {next_window}",
        f"model           version {m['version']} (global round {m['round']})"
        + (
            f", federation's Good share {m['population_good_share']:.3f}"
            if isinstance(m["population_good_share"], float)
            else ", no Good share yet: nights counted at p >= 0.5"
        )
        if m["version"]
        else "model           none yet",
    ]
    if n["night"]:
        predicted = (
            f"{n['predicted_quality']} (efficiency {100 * n['predicted_efficiency']:.0f}%)"
            if n["predicted_quality"]
            else "not predicted yet"
        )
        reference = (
            f"{100 * n['reference_efficiency']:.0f}%"
            if n["reference_efficiency"] is not None
            else "none"
        )
        lines.append(
            f"last night      {n['night']}: predicted {predicted}; "
            f"reference efficiency {reference}; reported {n['reported_quality'] or 'nothing'}"
        )
    else:
        lines.append("last night      no finished night yet")
    return "\n".join(lines)


def as_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
