"""``sleepfed-server status``: is the SuperLink up, how did the last run go, where the model
stands, which boards may join — read from the state directory (history, registry) and a TCP
connect to the SuperLink; nothing is written."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from typing import Any

from sleepfed.server.ops.config import ServerConfig
from sleepfed.server.ops.round_figures import HistoryView, RoundFigures, board_counts, view_history

# Exit codes of ``sleepfed-server status`` (2 is a configuration error, as everywhere; 4, a
# history or registry that cannot be read: sleepfed.server.ops.exit_codes).
EXIT_HEALTHY = 0
EXIT_DOWN = 1  # the SuperLink does not accept connections: no board can join
# the SuperLink is up but the last run failed or was interrupted, or the history was
# salvaged in the last day
EXIT_DEGRADED = 3
BAD_RUN_STATUSES = ("failed", "interrupted")
RECENT_RECOVERY = 86400.0  # seconds a salvaged history keeps the status degraded


def accepts_connections(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def superlink_up(config: ServerConfig, timeout: float = 2.0) -> bool:
    """The SuperLink on loopback and the fleet proxy on the boards' address both accept
    connections: a board can join only when both do."""
    public = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
    return accepts_connections("127.0.0.1", config.superlink_port, timeout) and accepts_connections(
        public, config.port, timeout
    )


def _next_round(rounds: list[RoundFigures], last_run: dict[str, Any] | None, up: bool) -> str:
    """When the next round happens, in words."""
    if last_run is not None and last_run["status"] == "running":
        done = sum(1 for r in rounds if r.run_id == last_run["run_id"])
        return f"round {done + 1} of {last_run['planned_rounds']} of the running run"
    if up:
        return "with the next run (sleepfed-server run submits one)"
    return "when the server runs"


def _problems(
    config: ServerConfig, up: bool, last_run: dict[str, Any] | None, view: HistoryView
) -> list[str]:
    problems = []
    if not up:
        problems.append(
            f"the SuperLink ({config.superlink_address}) or its fleet proxy ({config.address}) "
            "does not accept connections"
        )
    if last_run is not None and last_run["status"] in BAD_RUN_STATUSES:
        problems.append(f"the last run {last_run['run_id']} {last_run['status']}")
    recent = [r for r in view.recoveries if time.time() - float(r["at"]) < RECENT_RECOVERY]
    if recent:  # as a board's status does: a card that damaged one file may damage more
        problems.append(
            f"the history was found damaged and salvaged at {_when(recent[-1]['at'])} "
            "(the line history below)"
        )
    return problems


def _rounds_summary(
    rounds: list[RoundFigures], rolled_back: int, next_round: str
) -> dict[str, Any]:
    last = rounds[-1] if rounds else None
    return {
        "in_history": len(rounds),
        "rolled_back": rolled_back,
        "last_global_round": last.global_round if last else 0,
        "last_ended_at": last.ended_at if last else None,
        "last_duration_seconds": last.duration_seconds if last else None,
        "last_train_boards": last.train_nodes if last else None,
        "last_eval_boards": last.eval_nodes if last else None,
        "next_global_round": (last.global_round if last else 0) + 1,
        "next": next_round,
    }


def _rejected_summary(rounds: list[RoundFigures]) -> dict[str, Any]:
    """Updates rejected so far (None: the history does not record rejections)."""
    recorded = [r.rejected for r in rounds if r.rejected is not None]
    reasons: dict[str, int] = {}
    for r in rounds:
        for reason, n in r.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        "recorded": bool(recorded),
        "total": sum(recorded) if recorded else None,
        "last_round": rounds[-1].rejected if rounds else None,
        "by_reason": reasons,
    }


def _history_summary(config: ServerConfig, view: HistoryView) -> dict[str, Any]:
    return {
        "path": str(config.history_path),
        "exists": view.exists,
        "recoveries": view.recoveries,  # each time it was found damaged and salvaged
    }


def collect(config: ServerConfig) -> dict[str, Any]:
    """The status; StateFileError (one sentence naming the file) when the history or the
    registry cannot be read."""
    view = view_history(config.history_path)
    rounds, runs, rolled_back = view.rounds, view.runs, view.rolled_back
    boards = board_counts(config.state_dir)
    up = superlink_up(config)
    last_run = runs[-1] if runs else None
    last = rounds[-1] if rounds else None
    problems = _problems(config, up, last_run, view)
    return {
        "health": "ok" if not problems else ("down" if not up else "degraded"),
        "problems": problems,
        "superlink": {
            "address": config.address,  # the boards' address (the fleet proxy)
            "loopback": config.superlink_address,
            "up": up,
            "tls": not config.insecure,
        },
        "last_run": last_run,
        "runs": {
            status: sum(1 for r in runs if r["status"] == status)
            for status in sorted({str(r["status"]) for r in runs})
        },
        "rounds": _rounds_summary(rounds, rolled_back, _next_round(rounds, last_run, up)),
        "model": {
            "global_round": last.global_round if last else 0,
            "auc": last.auc if last else None,
            "loss": last.loss if last else None,
            "accuracy": last.accuracy if last else None,
        },
        "rejected_updates": _rejected_summary(rounds),
        "privacy": {"epsilon_spent": last.epsilon if last else None},
        "boards": boards,
        "node_auth": config.node_auth,
        "history": _history_summary(config, view),
    }


def exit_code(status: dict[str, Any]) -> int:
    return {"ok": EXIT_HEALTHY, "degraded": EXIT_DEGRADED}.get(status["health"], EXIT_DOWN)


def _when(value: object) -> str:
    if not value:
        return "never"
    return datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[arg-type]


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _history_line(history: dict[str, Any]) -> list[str]:
    """Nothing when the history is as it should be."""
    if not history["exists"]:
        return [f"history         none yet ({history['path']}; the first run makes it)"]
    if not history["recoveries"]:
        return []
    last = history["recoveries"][-1]
    salvaged = ", ".join(f"{table} {n}" for table, n in last["salvaged"].items())
    times = len(history["recoveries"])
    return [
        f"history         RECOVERED {_when(last['at'])}"
        + (f" (recovered {times} times)" if times > 1 else "")
        + f": {last['problem']}; moved aside as {last['quarantined']}; "
        f"salvaged {salvaged}"
    ]


def render(status: dict[str, Any]) -> str:
    s, r, m, rej = (status[k] for k in ("superlink", "rounds", "model", "rejected_updates"))
    run = status["last_run"]
    boards = status["boards"]
    lines = [
        f"health          {status['health'].upper()}"
        + "".join(f"\n  problem       {p}" for p in status["problems"]),
        f"superlink       {s['address']} {'UP' if s['up'] else 'DOWN'}"
        f" (fleet proxy; SuperLink on {s['loopback']})"
        f" ({'TLS' if s['tls'] else 'INSECURE, no TLS'})",
        (
            f"last run        {run['run_id']} {run['status']}, started {_when(run['started_at'])}"
            f", rounds {run['start_round'] + 1}..{run['start_round'] + run['planned_rounds']}"
            if run
            else "last run        none yet"
        ),
        "runs            " + (", ".join(f"{k}={v}" for k, v in status["runs"].items()) or "none"),
        f"rounds          {r['in_history']} in history ({r['rolled_back']} rolled back), "
        f"last {r['last_global_round'] or '-'} at {_when(r['last_ended_at'])}"
        + (
            f" took {r['last_duration_seconds']:.1f} s"
            if r["last_duration_seconds"] is not None
            else ""
        ),
        *_history_line(status["history"]),
        f"next round      {r['next_global_round']}: {r['next']}",
        (
            f"boards/round    train {r['last_train_boards']}, evaluate {r['last_eval_boards']}"
            if r["last_train_boards"] is not None
            else "boards/round    -"
        ),
        f"model           global round {m['global_round']}: held-out AUC {_number(m['auc'])}, "
        f"loss {_number(m['loss'])}, accuracy {_number(m['accuracy'])}",
        (
            f"rejected        {rej['total']} updates ({rej['last_round']} in the last round)"
            + (
                ": " + ", ".join(f"{k}={v}" for k, v in sorted(rej["by_reason"].items()))
                if rej["by_reason"]
                else ""
            )
            if rej["recorded"]
            else "rejected        not recorded in this history"
        ),
        "privacy         "
        + (
            f"epsilon spent {status['privacy']['epsilon_spent']:.2f}"
            if status["privacy"]["epsilon_spent"] is not None
            else "no differential privacy recorded"
        ),
        (
            "boards          "
            + ", ".join(f"{k} {v}" for k, v in boards.items())
            + ("" if status["node_auth"] else " (node authentication off)")
            if boards is not None
            else "boards          no registry (node authentication "
            + ("on, none enrolled yet)" if status["node_auth"] else "off)")
        ),
    ]
    return "\n".join(lines)


def as_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
