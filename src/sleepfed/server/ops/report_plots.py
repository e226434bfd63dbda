"""The report's plots (sleepfed.server.ops.report), drawn with matplotlib and kept as PNG
bytes: one figure per question an operator asks of the rounds."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from sleepfed.server.ops.round_figures import RoundFigures

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


def _draw_scores(rounds: list[RoundFigures], ax: Axes) -> None:
    if not any(r.auc is not None or r.train_loss is not None for r in rounds):
        _nothing(ax, "no held-out scores (no [evaluation] data) and no training loss")
        return
    x = [r.global_round for r in rounds]
    ax.plot(x, [r.auc for r in rounds], "o-", color="tab:blue", label="held-out AUC")
    ax.plot(x, [r.accuracy for r in rounds], "s--", color="tab:cyan", label="accuracy")
    ax.set_xlabel("global round")
    ax.set_ylabel("AUC, accuracy")
    ax.set_ylim(0.0, 1.0)
    loss_ax = ax.twinx()
    loss_ax.plot(x, [r.loss for r in rounds], "^-", color="tab:red", label="held-out loss")
    loss_ax.plot(x, [r.train_loss for r in rounds], "v:", color="tab:orange", label="train loss")
    loss_ax.set_ylabel("log loss")
    lines = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8, framealpha=0.8)


def _draw_boards(rounds: list[RoundFigures], ax: Axes) -> None:
    x = [r.global_round for r in rounds]
    width = 0.4
    ax.bar([v - width / 2 for v in x], [r.train_nodes for r in rounds], width, label="train")
    ax.bar([v + width / 2 for v in x], [r.eval_nodes for r in rounds], width, label="evaluate")
    ax.set_xlabel("global round")
    ax.set_ylabel("boards")
    ax.legend(fontsize=8)


def _draw_rejected(rounds: list[RoundFigures], ax: Axes) -> None:
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


def _draw_epsilon(rounds: list[RoundFigures], ax: Axes) -> None:
    private = [r for r in rounds if r.epsilon is not None]
    if not private:
        _nothing(ax, "no differential privacy in these rounds: no ε spent")
        return
    ax.plot([r.global_round for r in private], [r.epsilon for r in private], "o-",
            color="tab:purple")  # fmt: skip
    ax.set_xlabel("global round")
    ax.set_ylabel("ε spent (cumulative)")
    ax.set_ylim(bottom=0)


def _draw_durations(rounds: list[RoundFigures], ax: Axes) -> None:
    timed = [r for r in rounds if r.duration_seconds is not None]
    if not timed:
        _nothing(ax, "no round durations")
        return
    ax.bar([r.global_round for r in timed], [r.duration_seconds for r in timed], 0.6,
           color="tab:gray")  # fmt: skip
    ax.set_xlabel("global round")
    ax.set_ylabel("seconds")


def plots(rounds: list[RoundFigures]) -> list[Plot]:
    return [
        Plot("scores", "Held-out AUC and loss per round", _png(partial(_draw_scores, rounds))),
        Plot("boards", "Boards per round", _png(partial(_draw_boards, rounds))),
        Plot("rejected", "Updates rejected per round", _png(partial(_draw_rejected, rounds))),
        Plot("epsilon", "Privacy budget ε spent", _png(partial(_draw_epsilon, rounds))),
        Plot("durations", "Round durations", _png(partial(_draw_durations, rounds))),
    ]
