"""What every generated benchmark section shares: the provenance line (when, where, which
commit, which results file), Markdown tables, and the way ratios are written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]


def provenance(record: Record) -> str:
    machine = record["machine"]
    # Older results files have no load average; the sentence then reads as it always did.
    load = record.get("load_average")
    cpus = f"{machine['cpus']} CPUs" + (f" (load average {load[0]:.1f})" if load else "")
    return (
        f"Measured {record['date']} on {machine['arch']}, {cpus}, Python "
        f"{machine['python']}, commit {record['commit']} "
        f"(`benchmarks/results/{record['bench']}.json`)."
    )


def table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``align`` holds "l" or "r" per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def times(ratio: float) -> str:
    """A ratio as the docs write it: one decimal under 10, none above."""
    return f"{ratio:.1f}" if ratio < 10 else f"{ratio:,.0f}"


def signed(delta: float, digits: int = 3) -> str:
    """A difference with its sign, a real minus sign for negatives."""
    return f"{delta:+.{digits}f}".replace("-", "−")
