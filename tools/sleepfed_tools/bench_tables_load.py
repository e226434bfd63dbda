"""The generated sections of the load runs (benchmarks/bench_load.py, docs/benchmarks.md):
the run's row, the SuperLink's state compared when the run was made with
``--compare-sqlite``, and a board's bytes per round by Fleet RPC."""

from __future__ import annotations

from typing import Any

from sleepfed_tools.bench_tables_format import Record, provenance, table

# The Fleet RPCs of bench_load's byte table, in words; the once-per-session ones share a row.
RPC_LABELS = {
    "pull-object": "`pull-object` (the incoming messages' objects)",
    "pull-object (not yet available)": "`pull-object`, asked before the server had it",
    "push-object": "`push-object` (the replies' objects)",
    "pull-messages (empty poll)": "`pull-messages`, empty (a poll every 3 s)",
    "send-node-heartbeat": "`send-node-heartbeat`",
    "push-messages": "`push-messages`",
    "confirm-message-received": "`confirm-message-received`",
    "pull-messages (message)": "`pull-messages` with a message",
}
SESSION_RPCS = ("register-node", "activate-node", "get-run", "get-fab", "deactivate-node")


def _load_row(figures: dict[str, Any]) -> list[str]:
    """bench_load's run as one row of the Load table."""
    nodes = figures["round_nodes"]
    all_nodes = (
        "yes"
        if figures["every_round_all_nodes"]
        else (
            "train "
            + ", ".join(str(t) for t, _ in nodes)
            + "; eval "
            + ", ".join(str(e) for _, e in nodes)
        )
    )
    timeout = figures.get("round_timeout")
    return [
        f"{figures['boards']} boards × {figures['rounds']} rounds, load avg "
        f"{figures['load_average_during_mean']:.0f}"
        + (f" (`--round-timeout {timeout:g}`)" if timeout is not None else ""),
        ", ".join(f"{s:.0f}" for s in figures["round_seconds"]),
        all_nodes,
        f"{figures['server_cpu_s']:.0f} s in {figures['run_seconds']:,.0f} s "
        f"({figures['server_cpu_share']:.0%} of a core), {figures['server_rss_peak_mb']:.0f} MB",
        f"{figures['daemon_rss_peak_mb_median']:.1f} MB, "
        f"{figures['daemon_cpu_percent_median']:.1f}% of a core",
        f"{figures['board_tree_rss_peak_mb_median']:.0f} MB, "
        f"{figures['board_tree_cpu_s_per_round_median']:.1f} s",
        f"{figures['readings_sent']:,}, **{figures['readings_lost']}**",
    ]


def _bytes_rows(figures: dict[str, Any]) -> list[list[str]]:
    by_rpc: dict[str, dict[str, float]] = figures["by_rpc_per_board_round"]

    def row(label: str, rpcs: list[str]) -> list[str]:
        sums = {
            k: sum(by_rpc[r][k] for r in rpcs)
            for k in ("calls", "sent", "sent_headers", "received")
        }
        return [
            label,
            f"{sums['calls']:.1f}",
            f"{sums['sent']:,.0f}",
            f"{sums['sent_headers']:,.0f}",
            f"{sums['received']:,.0f}",
        ]

    session = [r for r in SESSION_RPCS if r in by_rpc]
    rows = [row(RPC_LABELS.get(rpc, f"`{rpc}`"), [rpc]) for rpc in by_rpc if rpc not in session]
    if session:
        names = ", ".join(f"`{r}`" for r in session)
        rows.append(row(f"once per session ({names}), per round", session))
    sent = figures["bytes_sent_per_board_round"]
    rows.append(
        [
            "**total**",
            f"**{figures['requests_per_board_round']:.1f}**",
            f"**{sent:,}** ({figures['ratio_to_goal']:.2f}× the 20 KB goal)",
            f"{figures['headers_sent_per_board_round']:,}",
            f"{figures['bytes_received_per_board_round']:,}",
        ]
    )
    return rows


def load(record: Record) -> str:
    figures = record["figures"]
    runs = table(
        [
            "run",
            "rounds (s each)",
            "all nodes",
            "server tree CPU, RSS peak",
            "agent daemon RSS, CPU",
            "board tree RSS peak, CPU per round",
            "readings sent, lost",
        ],
        "lllllll",
        [_load_row(figures)],
    )
    lead = (
        f"**Bytes per board per round** (decrypted HTTP/1.1, board → server; "
        f"{figures['boards']} boards × {figures['rounds']} rounds, "
        f"{figures['key_curve'].upper().replace('P', 'P-')} keys):"
    )
    byte_table = table(
        ["Fleet RPC", "calls", "sent B", "of it headers", "received B"],
        "lrrrr",
        _bytes_rows(figures),
    )
    parts = [runs, *_state_comparison(figures), lead, byte_table, provenance(record)]
    return "\n\n".join(parts)


def _reliability_cells(f: dict[str, Any]) -> list[str]:
    exit_code = f.get("server_exit", 0)
    return [
        "completed" if exit_code == 0 else f"**failed** (exit {exit_code})",
        ", ".join(f"{s:.0f}" for s in f["round_seconds"]) or "none",
        ", ".join(f"{t}/{e}" for t, e in f["round_nodes"]),
        str(f["rounds_at_timeout"]),
        str(f["replies_lost"]),
        str(f["node_restarts"]),
        str(f["database_locked"]),
        f"{f['load_average_during_mean']:.1f}",
    ]


def _state_comparison(figures: dict[str, Any]) -> list[str]:
    """The same fleet run first with the SuperLink's state in SQLite, then in memory."""
    before = figures.get("sqlite_before")
    if before is None:
        return []
    after = figures["memory_after"]
    header = [
        "SuperLink state",
        "run",
        "rounds (s each)",
        "boards train/eval per round",
        "rounds at timeout",
        "replies lost",
        "nodes restarted",
        "`database is locked`",
        "load avg",
    ]
    rows = [
        ['SQLite file (`superlink_state = "sqlite"`)', *_reliability_cells(before)],
        ["**memory** (default)", *_reliability_cells(after)],
    ]
    lead = "The same fleet, one run after the other in one invocation (`--compare-sqlite`):"
    return [lead, table(header, "llllrrrrr", rows)]


# bench_before_after's figures: (key, words, format, the goal as after / before)
BEFORE_AFTER_ROWS = (
    ("bytes_sent_per_board_round", "bytes sent per board per round", "{:,.0f} B", "≤ 20 KB"),
    ("requests_per_board_round", "requests per board per round", "{:.1f}", ""),
    (
        "messages_per_board_round",
        "messages (ClientApp processes) per board per round",
        "{:.1f}",
        "1 (+ the last model)",
    ),
    (
        "board_tree_cpu_s_per_round",
        "board CPU per round (Flower tree + daemon)",
        "{:.1f} s",
        "≤ 0.5×",
    ),
    ("round_seconds_mean", "round time, mean", "{:.0f} s", "≤ 0.6× (20 boards)"),
)


def before_after(record: Record) -> str:
    """The load benchmark on the base commit's code and on this one, in one invocation."""
    figures = record["figures"]
    before, after, ratios = figures["before"], figures["after"], figures["after_over_before"]
    rows = []
    for key, words, fmt, goal in BEFORE_AFTER_ROWS:
        ratio = ratios.get(key)
        cells = [fmt.format(before[key]), fmt.format(after[key])]
        rows.append([words, *cells, f"{ratio:.2f}×" if ratio is not None else "", goal])
    rows.append(
        [
            "rounds in which every board trained and was scored",
            f"{before['rounds_all_boards']} of {before['rounds']}",
            f"{after['rounds_all_boards']} of {after['rounds']}",
            "",
            "all",
        ]
    )
    rows.append(
        [
            "node keys, SuperLink state",
            f"{before['key_curve']}, {before['superlink_state']}",
            f"{after['key_curve']}, {after['superlink_state']}",
            "",
            "",
        ]
    )
    rows.append(
        [
            "load average during the run",
            f"{before['load_average_during_mean']:.1f}",
            f"{after['load_average_during_mean']:.1f}",
            "",
            "",
        ]
    )
    header = ["figure", f"before (`{figures['base']}`)", "after", "after / before", "goal"]
    lead = (
        f"{figures['boards']} boards × {figures['rounds']} rounds at "
        f"{figures['rate_per_board']:g} readings/s each, the base's code first, then this "
        "checkout's (`benchmarks/bench_before_after.py`):"
    )
    return "\n\n".join([lead, table(header, "lrrrl", rows), provenance(record)])
