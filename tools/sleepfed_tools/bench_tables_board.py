"""The generated sections about one board's costs: ingest, memory, Bluetooth LE, fuzzing
(docs/benchmarks.md) and a metrics scrape (docs/operations.md), each made from its
``benchmarks/results/<bench>.json``."""

from __future__ import annotations

from sleepfed_tools.bench_tables_format import Record, provenance, table, times

PROMETHEUS_INTERVAL_S = 15.0  # Prometheus' usual scrape interval


def ingest(record: Record) -> str:
    figures = record["figures"]
    rate, ratio = figures["commit_readings_per_s"], figures["commit_ratio_to_1_per_txn_full"]
    e2e = figures["end_to_end"]
    rows = [
        ("one transaction per reading, `synchronous=full` (baseline)", "1_reading_per_txn_full"),
        ("batches of 100, full", "batch_100_full"),
        ("batches of 2,000 (the default), full", "batch_2000_full"),
        ("batches of 2,000, normal", "batch_2000_normal"),
    ]
    lines = ["| path | readings/s | × baseline |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {rate[key]:,.0f} | {ratio[key]:.1f} |" for label, key in rows]
    lines.append(
        "| **end to end**: PTY → `sleepfed-agent run` → SQLite (full) → ACK | "
        f"**{e2e['readings_per_s']:,}** | {e2e['ratio_to_1_per_txn_full']:.1f} |"
    )
    parse = figures["parse_lines_per_s"]
    return (
        "\n".join(lines)
        + "\n\n"
        + f"Against the goal of {figures['goal_readings_per_s']:,} readings/s: batched commits "
        f"{rate['batch_2000_full'] / figures['goal_readings_per_s']:.1f}×, end to end "
        f"{e2e['ratio_to_goal']:.2f}×. "
        + f"End to end the daemon uses {e2e['daemon_cpu_s_per_100k']:.2f} s of CPU per 100,000 "
        f"readings; `parse_line` alone does {parse['parse_line']:,.0f} lines/s "
        f"({figures['parse_ratio_to_bare_split']['parse_line']:.2f}× a bare `split` + `float`). "
        + provenance(record)
    )


def _parts(by_process: dict[str, float], root: str, root_name: str) -> tuple[str, float]:
    """ "daemon 41 + flower-supernode 134 + …" for a tree at its peak, and the root's MB.

    Labels are merged on what precedes a colon (nginx names its workers "nginx: worker")."""
    merged: dict[str, float] = {}
    for label, mb in by_process.items():
        key = label.split(":")[0]
        merged[key] = merged.get(key, 0.0) + mb
    own = merged.pop(root, 0.0)
    parts = [f"{root_name} {own:.0f}", *(f"{k} {v:.0f}" for k, v in merged.items())]
    return " + ".join(parts), own


def memory(record: Record) -> str:
    figures = record["figures"]
    bare = figures["bare_python_mb"]
    boards = figures["boards"]

    def worst(key: str) -> float:
        return max(float(b[key]) for b in boards.values())

    tree_board = max(boards, key=lambda name: boards[name]["tree_round_peak_mb"])
    board_tree = boards[tree_board]["tree_round_peak_mb"]
    by_board = figures["board_tree_peak_by_process_mb"][tree_board]
    board_parts, daemon_in_tree = _parts(by_board, "sleepfed-agent", "daemon")
    server_parts, _ = _parts(
        figures["server_tree_peak_by_process_mb"], "sleepfed-server", "sleepfed-server"
    )
    server_tree = figures["server_tree_peak_mb"]
    after = figures["daemon_between_rounds_worst_mb"]

    def row(label: str, mb: float, digits: int = 1, bold: bool = False) -> list[str]:
        value = f"{mb:.{digits}f}"
        return [label, f"**{value}**" if bold else value, times(mb / bare)]

    rows = [
        row("bare `python` (baseline)", bare),
        row("`python` + numpy", figures["python_numpy_mb"]),
        row("agent daemon, idle before the round", worst("daemon_idle_mb")),
        row("agent daemon, peak during the round", worst("daemon_round_peak_mb")),
        row("**agent daemon, after the round (between rounds)**", after, bold=True),
        row(f"the board's whole tree at its peak ({board_parts})", board_tree, 0),
        row(f"the server's tree at its peak ({server_parts})", server_tree, 0),
    ]
    goal = figures["goal_daemon_between_rounds_mb"]
    return (
        table(["process", "RSS MB", "× bare Python"], "lrr", rows)
        + "\n\n"
        + f"Against the goal of ≤ {goal:.0f} MB between rounds: {after:.1f} MB, the worst of "
        f"the {len(boards)} boards ({after / goal:.2f}× the goal). Flower's processes add "
        f"{board_tree - daemon_in_tree:.0f} MB to a board during a round, and only then; the "
        f"round of the two-board federation took {figures['round_seconds']:.0f} s. "
        + provenance(record)
    )


def ble(record: Record) -> str:
    figures = record["figures"]
    parse, stored, e2e = (
        figures["parse"],
        figures["in_process"]["handler_and_store"],
        figures["end_to_end"],
    )

    def row(label: str, f: dict[str, float]) -> list[str]:
        return [
            label,
            f"{f['notifications_per_s']:,}",
            f"{f['cpu_s_per_1k']:.4f}",
            f"{f['headroom']:,.0f}×",
        ]

    rows = [
        row("bare `int.from_bytes` of the payloads (baseline)", parse["bare_decode"]),
        row("`parse_heart_rate_measurement`", parse["parse_heart_rate_measurement"]),
        row("the source's handler (parse, check, readings) + batched SQLite commit (full)", stored),
        [
            "**end to end**: stand-in → D-Bus → bleak's BlueZ backend → `sleepfed-agent run` "
            "→ SQLite",
            f"**{e2e['notifications_per_s']:,}**",
            f"**{e2e['cpu_s_per_1k']:.3f}** (daemon)",
            f"**{e2e['headroom']:,.0f}×**",
        ],
    ]
    header = [
        "path",
        "notifications/s",
        "CPU s per 1,000",
        f"headroom over {figures['wearable_max_per_s']:.0f}/s",
    ]
    n = e2e["notifications"]
    exactly = "exactly " if e2e["hr_rows"] == n else ""
    goal = figures["goal_headroom"]
    text = (
        f"Against the goal of ≥ {goal:,.0f}× headroom "
        f"({goal * figures['wearable_max_per_s']:,.0f} notifications/s): in process "
        f"{stored['ratio_to_goal']:.1f}× the goal, end to end {e2e['ratio_to_goal']:.2f}×. "
        f"End to end, {n:,} notifications gave {exactly}{e2e['hr_rows']:,} HR and "
        f"{e2e['rr_rows']:,} RR rows ({e2e['rejected']} rejected); the stand-in pushed "
        f"{e2e['push_per_s']:,}/s (`NotifyMany`, {e2e['push_batch']} per D-Bus call) and the "
        f"daemon kept up at {e2e['notifications_per_s'] / e2e['push_per_s']:.2f}× that; its CPU "
        f"per notification would allow about {round(e2e['daemon_cpu_ceiling_per_s'], -2):,.0f}/s "
        f"on one core. The payloads carry {figures['rr_per_notification']:.2f} RR intervals on "
        "average. "
    )
    return table(header, "lrrr", rows) + "\n\n" + text + provenance(record)


def fuzz(record: Record) -> str:
    figures = record["figures"]
    rows = [
        [
            r["name"],
            f"{r['n']:,}",
            f"{r['wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['n'] / r['cpu_s']:,.0f}",
            f"{r['ratio']:.2f}",
        ]
        for r in figures["rows"]
    ]
    header = ["inputs", "count", "wall s", "CPU s", "per CPU s", "× baseline"]
    serial = figures["tallies"]["serial"]
    crashes = figures["crashes"]
    return (
        table(header, "lrrrrr", rows)
        + "\n\n"
        + ("No crash" if not crashes else f"**{crashes} crashes**")
        + f"; every serial line had one outcome ({serial['outcomes']:,} of "
        f"{serial['inputs']:,}); rejection reasons hit: {len(figures['serial_rejected'])} of "
        f"{figures['serial_reasons_known']} serial, {len(figures['ble_rejected'])} of "
        f"{figures['ble_reasons_known']} BLE (seed {figures['seed']}). " + provenance(record)
    )


def metrics(record: Record) -> str:
    figures = record["figures"]
    rows = [
        [
            "agent",
            f"{r['readings']:,} readings ({r['file_mb']:.0f} MB)",
            f"{r['baseline_ms']:.2f}",
            f"{r['scrape_ms']:.1f}",
            f"{r['ratio']:.0f}",
        ]
        for r in figures["agent"]
    ]
    server = figures["server"]
    rows.append(
        [
            "server",
            f"{server['rounds']:,} rounds",
            f"{server['baseline_ms']:.2f}",
            f"{server['scrape_ms']:.1f}",
            f"{server['ratio']:.0f}",
        ]
    )
    largest = max(figures["agent"], key=lambda r: r["readings"])
    share = largest["scrape_ms"] / 1000 / PROMETHEUS_INTERVAL_S
    header = ["endpoint", "file", "baseline (ms)", "scrape (ms)", "× baseline"]
    return (
        table(header, "llrrr", rows)
        + "\n\n"
        + f"At Prometheus' usual {PROMETHEUS_INTERVAL_S:.0f} s interval the scrape of "
        f"{largest['readings']:,} readings takes {share:.1%} of one core; the agent's response "
        f"is {largest['scrape_bytes'] / 1000:.1f} KB. " + provenance(record)
    )
