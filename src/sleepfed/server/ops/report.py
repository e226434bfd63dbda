"""``sleepfed-server report``: one self-contained HTML page about the federation's rounds, with
matplotlib plots embedded as PNG (no file beside it, nothing fetched when it is opened):
held-out AUC and loss per round, boards per round, updates rejected, privacy budget spent,
round durations, and a table of every round."""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sleepfed.server.ops.config import ServerConfig
from sleepfed.server.ops.round_figures import RoundFigures, read_history

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FIGURE_INCHES = (9.0, 3.2)
FIGURE_DPI = 100


class ReportError(RuntimeError):
    """The report cannot be made (matplotlib missing, output not writable)."""


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    png: bytes


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise ReportError("matplotlib is not installed: pip install 'sleepfed[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(draw: Callable[[Axes], None]) -> bytes:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    try:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: whole numbers
        draw(ax)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=FIGURE_DPI)
        return out.getvalue()
    finally:
        plt.close(fig)


def _nothing(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def plots(rounds: list[RoundFigures]) -> list[Plot]:
    x = [r.global_round for r in rounds]

    def scores(ax: Axes) -> None:
        if not any(r.auc is not None or r.train_loss is not None for r in rounds):
            _nothing(ax, "no held-out scores (no [evaluation] data) and no training loss")
            return
        ax.plot(x, [r.auc for r in rounds], "o-", color="tab:blue", label="held-out AUC")
        ax.plot(x, [r.accuracy for r in rounds], "s--", color="tab:cyan", label="accuracy")
        ax.set_xlabel("global round")
        ax.set_ylabel("AUC, accuracy")
        ax.set_ylim(0.0, 1.0)
        loss_ax = ax.twinx()
        loss_ax.plot(x, [r.loss for r in rounds], "^-", color="tab:red", label="held-out loss")
        loss_ax.plot(
            x, [r.train_loss for r in rounds], "v:", color="tab:orange", label="train loss"
        )
        loss_ax.set_ylabel("log loss")
        lines = ax.get_legend_handles_labels()
        more = loss_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8, framealpha=0.8)

    def boards(ax: Axes) -> None:
        width = 0.4
        ax.bar([v - width / 2 for v in x], [r.train_nodes for r in rounds], width, label="train")
        ax.bar([v + width / 2 for v in x], [r.eval_nodes for r in rounds], width, label="evaluate")
        ax.set_xlabel("global round")
        ax.set_ylabel("boards")
        ax.legend(fontsize=8)

    def rejected(ax: Axes) -> None:
        recorded = [r for r in rounds if r.rejected is not None]
        if not recorded:
            _nothing(ax, "this history does not record rejected updates")
            return
        reasons = sorted({k for r in recorded for k in r.rejected_by_reason})
        bottom = [0] * len(recorded)
        xs = [r.global_round for r in recorded]
        for reason in reasons:
            values = [r.rejected_by_reason.get(reason, 0) for r in recorded]
            ax.bar(xs, values, 0.6, bottom=bottom, label=reason)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if not reasons:
            ax.bar(xs, [0] * len(xs), 0.6)
            ax.text(0.5, 0.5, "no update rejected", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_xlabel("global round")
        ax.set_ylabel("updates rejected")
        ax.set_ylim(0, max(max(bottom) + 1, 2))

    def epsilon(ax: Axes) -> None:
        private = [r for r in rounds if r.epsilon is not None]
        if not private:
            _nothing(ax, "no differential privacy in these rounds: no ε spent")
            return
        ax.plot([r.global_round for r in private], [r.epsilon for r in private], "o-",
                color="tab:purple")  # fmt: skip
        ax.set_xlabel("global round")
        ax.set_ylabel("ε spent (cumulative)")
        ax.set_ylim(bottom=0)

    def durations(ax: Axes) -> None:
        timed = [r for r in rounds if r.duration_seconds is not None]
        if not timed:
            _nothing(ax, "no round durations")
            return
        ax.bar([r.global_round for r in timed], [r.duration_seconds for r in timed], 0.6,
               color="tab:gray")  # fmt: skip
        ax.set_xlabel("global round")
        ax.set_ylabel("seconds")

    return [
        Plot("scores", "Held-out AUC and loss per round", _png(scores)),
        Plot("boards", "Boards per round", _png(boards)),
        Plot("rejected", "Updates rejected per round", _png(rejected)),
        Plot("epsilon", "Privacy budget ε spent", _png(epsilon)),
        Plot("durations", "Round durations", _png(durations)),
    ]


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


def render_html(
    config: ServerConfig, rounds: list[RoundFigures], runs: list[dict[str, object]]
) -> str:
    made = datetime.fromtimestamp(time.time()).strftime("%Y-%m-%d %H:%M:%S")
    last = rounds[-1] if rounds else None
    summary = [
        ("history", str(config.history_path)),
        ("rounds", str(len(rounds))),
        ("runs", ", ".join(f"{r['run_id']} {r['status']}" for r in runs[-5:]) or "none"),
        ("current model", f"global round {last.global_round}" if last else "none yet"),
        ("held-out AUC", _cell(last.auc) if last else "–"),
        ("ε spent", _cell(last.epsilon, 2) if last else "–"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>sleepfed federation report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>sleepfed federation report</h1>",
        f"<p>Made {made} from the server's history.</p>",
        '<table class="summary">',
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary),
        "</table>",
    ]
    if not rounds:
        parts.append("<p><strong>No rounds yet.</strong></p>")
    else:
        for plot in plots(rounds):
            data = base64.b64encode(plot.png).decode()
            parts += [
                f'<h2>{html.escape(plot.title)}</h2><figure id="{plot.key}">',
                f'<img src="data:image/png;base64,{data}" alt="{html.escape(plot.title)}" '
                f'width="{int(FIGURE_INCHES[0] * FIGURE_DPI)}" '
                f'height="{int(FIGURE_INCHES[1] * FIGURE_DPI)}">',
                "</figure>",
            ]
        parts += [
            "<h2>Every round</h2><table>",
            "<tr><th>round</th><th>run</th><th>ended</th><th>seconds</th><th>train boards</th>"
            "<th>eval boards</th><th>AUC</th><th>loss</th><th>train loss</th>"
            "<th>rejected</th><th>ε</th></tr>",
        ]
        for r in rounds:
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
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
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
