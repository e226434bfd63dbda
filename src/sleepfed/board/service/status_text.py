"""``sleepfed-agent status`` in words: the lines a person reads, made from the dictionary
``sleepfed.board.service.status.collect`` returns (the same one ``--json`` prints)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _when(value: float | None) -> str:
    if not value:
        return "never"
    return datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")


def render(status: dict[str, Any]) -> str:
    lines = [
        *_board_lines(status),
        *_count_lines(status),
        *_federation_lines(status),
        _model_line(status["model"]),
        _personal_line(status["model"]["personal"]),
        _last_night_line(status["last_night"]),
    ]
    return "\n".join(lines)


def _board_lines(status: dict[str, Any]) -> list[str]:
    d, b = status["daemon"], status["buffer"]
    cap = f"{b['cap_bytes'] / 1e6:.1f} MB" if b["cap_bytes"] else "none"
    return [
        f"board           {status['board']}",
        f"health          {status['health'].upper()}"
        + "".join(f"\n  problem       {p}" for p in status["problems"]),
        f"daemon          {'running pid ' + str(d['pid']) if d['running'] else 'NOT RUNNING'}"
        f"  health={d['health']}  sources={d['sources_connected']}",
        f"buffer          {b['readings']} readings, {b['stage_labels']} stage labels, "
        f"{b['nights']} nights, {b['windows']} windows ({b['labelled_windows']} labelled)",
        f"buffer size     {b['used_bytes'] / 1e6:.2f} MB used, cap {cap}",
        _movement_line(status["movement"]),
        "battery         "
        + (
            ", ".join(
                f"{source} {b['percent']:.0f}% at {_when(b['at'])}"
                for source, b in sorted(status["battery"].items())
            )
            or "no level reported in two days"
        ),
    ]


MOVEMENT_WORDS = {
    "none": "none (heart rate only: nights without movement are predicted by the movement-free"
    " model)",
    "serial": "serial (MOV lines, if the device sends them)",
}


def _movement_line(sources: dict[str, str]) -> str:
    return "movement        " + (
        ", ".join(
            f"{name} {MOVEMENT_WORDS.get(kind, kind)}" for name, kind in sorted(sources.items())
        )
        or "no sources"
    )


def _count_lines(status: dict[str, Any]) -> list[str]:
    # Classes at zero are summed up in one "N classes 0", the others listed by name.
    rejected = {k: v for k, v in status["rejection_classes"].items() if v}
    failures = {k: v for k, v in status["failure_classes"].items() if v}
    zero_rejected = len(status["rejection_classes"]) - len(rejected)
    zero_failures = len(status["failure_classes"]) - len(failures)
    return [
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
    ]


def _federation_lines(status: dict[str, Any]) -> list[str]:
    r, f = status["rounds"], status["federation"]
    next_window = (
        _when(f["next_window_at"]) if f["next_window_at"] else "open now" if f["window"] else "n/a"
    )
    return [
        f"rounds          joined {r['joined']}, evaluated {r['evaluated']}, "
        f"last trained round {r['last_train_round'] or '-'}"
        + (
            f" from global round {r['last_trained_from']}"
            if r["last_trained_from"] is not None
            else ""
        )
        + f" at {_when(r['last_train_at'])}, "
        f"{r['retries']} retries",
        f"federation      server={f['server']} window={f['window']} "
        f"session={'running' if f['session_running'] else 'idle'} last={f['last_session_outcome']}",
        f"participation   last {_when(f['last_participation_at'])}, next window {next_window}",
    ]


def _model_line(m: dict[str, Any]) -> str:
    if not m["version"]:
        return "model           none yet"
    return f"model           version {m['version']} (global round {m['round']})" + (
        f", federation's Good share {m['population_good_share']:.3f}"
        if isinstance(m["population_good_share"], float)
        else ", no Good share yet: nights counted at p >= 0.5"
    )


def _personal_line(p: dict[str, Any] | None) -> str:
    if p is None:
        return "personal model  none yet (needs labelled nights)"
    loss, accuracy = p["held_out_loss"], p["held_out_accuracy"]
    return (
        f"personal model  {'used' if p['used'] else 'not used'}, from model {p['base_version']}: "
        f"held-out loss {loss['personal']:.3f} vs global {loss['global']:.3f}, accuracy "
        f"{100 * accuracy['personal']:.0f}% vs {100 * accuracy['global']:.0f}% "
        f"({p['held_out_windows']} windows)"
    )


HEAD_WORDS = {"no_movement": ", movement-free head: no movement readings that night"}


def _last_night_line(n: dict[str, Any]) -> str:
    if not n["night"]:
        return "last night      no finished night yet"
    predicted = (
        f"{n['predicted_quality']} (efficiency {100 * n['predicted_efficiency']:.0f}%, "
        f"{n['model_kind']} model{HEAD_WORDS.get(n['model_head'], '')})"
        if n["predicted_quality"]
        else "not predicted yet"
    )
    reference = (
        f"{100 * n['reference_efficiency']:.0f}%"
        if n["reference_efficiency"] is not None
        else "none"
    )
    return (
        f"last night      {n['night']}: predicted {predicted}; "
        f"reference efficiency {reference}; reported {n['reported_quality'] or 'nothing'}"
    )
