"""``sleepfed-server report``: one self-contained HTML page about the federation's rounds, with
matplotlib plots embedded as PNG (no file beside it, nothing fetched when it is opened):
held-out AUC and loss per round, boards per round, updates rejected, privacy budget spent,
round durations (drawn by sleepfed.server.ops.report_plots), and a table of every round."""

from __future__ import annotations

import base64
import html
import time
from datetime import datetime
from pathlib import Path

from sleepfed.server.ops.config import ServerConfig
from sleepfed.server.ops.report_plots import FIGURE_DPI, FIGURE_INCHES, Plot, ReportError, plots
from sleepfed.server.ops.round_figures import RoundFigures, read_history


def _cell(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 960px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
figure { margin: 8px 0 20px 0; } figcaption { font-size: 13px; color: #555; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } .summary td { text-align: left; }
"""


def _summary(
    config: ServerConfig, rounds: list[RoundFigures], runs: list[dict[str, object]]
) -> list[str]:
    last = rounds[-1] if rounds else None
    rows = [
        ("history", str(config.history_path)),
        ("rounds", str(len(rounds))),
        ("runs", ", ".join(f"{r['run_id']} {r['status']}" for r in runs[-5:]) or "none"),
        ("current model", f"global round {last.global_round}" if last else "none yet"),
        ("held-out AUC", _cell(last.auc) if last else "–"),
        ("ε spent", _cell(last.epsilon, 2) if last else "–"),
    ]
    return [
        '<table class="summary">',
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows),
        "</table>",
    ]


def _figure(plot: Plot) -> list[str]:
    """The plot inlined as a data: URL (the page stands alone)."""
    data = base64.b64encode(plot.png).decode()
    return [
        f'<h2>{html.escape(plot.title)}</h2><figure id="{plot.key}">',
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(plot.title)}" '
        f'width="{int(FIGURE_INCHES[0] * FIGURE_DPI)}" '
        f'height="{int(FIGURE_INCHES[1] * FIGURE_DPI)}">',
        "</figure>",
    ]


def _round_row(r: RoundFigures) -> str:
    ended = datetime.fromtimestamp(r.ended_at).strftime("%Y-%m-%d %H:%M:%S")
    cells = [
        str(r.global_round),
        html.escape(r.run_id),
        ended,
        _cell(r.duration_seconds, 1),
        str(r.train_nodes),
        str(r.eval_nodes),
        _cell(r.auc),
        _cell(r.loss),
        _cell(r.train_loss),
        _cell(r.rejected),
        _cell(r.epsilon, 2),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _rounds_table(rounds: list[RoundFigures]) -> list[str]:
    return [
        "<h2>Every round</h2><table>",
        "<tr><th>round</th><th>run</th><th>ended</th><th>seconds</th><th>train boards</th>"
        "<th>eval boards</th><th>AUC</th><th>loss</th><th>train loss</th>"
        "<th>rejected</th><th>ε</th></tr>",
        *(_round_row(r) for r in rounds),
        "</table>",
    ]


def render_html(
    config: ServerConfig, rounds: list[RoundFigures], runs: list[dict[str, object]]
) -> str:
    made = datetime.fromtimestamp(time.time()).strftime("%Y-%m-%d %H:%M:%S")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>sleepfed federation report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>sleepfed federation report</h1>",
        f"<p>Made {made} from the server's history.</p>",
        *_summary(config, rounds, runs),
    ]
    if not rounds:
        parts.append("<p><strong>No rounds yet.</strong></p>")
    else:
        for plot in plots(rounds):
            parts += _figure(plot)
        parts += _rounds_table(rounds)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(config: ServerConfig, out: Path) -> int:
    """Write the page to ``out``; returns the number of rounds it covers."""
    rounds, runs, _ = read_history(config.history_path)
    page = render_html(config, rounds, runs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as error:
        raise ReportError(f"cannot write {out}: {error.strerror or error}") from None
    return len(rounds)
