"""The generated sections about federations: the strategies and DP evaluation
(docs/evaluation.md), a board's round under QEMU (docker/README.md), and the load, scale and
real-node runs (docs/benchmarks.md), each made from its ``benchmarks/results/<bench>.json``."""

from __future__ import annotations

from typing import Any

from sleepfed_tools.bench_tables_format import Record, provenance, signed, table, times

# The Fleet RPCs of bench_load's byte table, in words; the once-per-session ones share a row.
RPC_LABELS = {
    "pull-object": "`pull-object` (the incoming messages' objects)",
    "push-object": "`push-object` (the replies' objects)",
    "pull-messages (empty poll)": "`pull-messages`, empty (a poll every 3 s)",
    "send-node-heartbeat": "`send-node-heartbeat`",
    "push-messages": "`push-messages`",
    "confirm-message-received": "`confirm-message-received`",
    "pull-messages (message)": "`pull-messages` with a message",
}
SESSION_RPCS = ("register-node", "activate-node", "get-run", "get-fab", "deactivate-node")
QEMU_PHASES = {
    "import": "start + import the ClientApp (flwr, numpy)",
    "load": "read the night's windows ({windows:.0f})",
    "train": "train ({iterations} gradient steps, `sleepfed.model.objective`)",
    "container": "whole `docker run`",
}


def _cell(value: Any, digits: int = 3) -> str:
    return (
        "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def _scores(label: str, f: dict[str, Any]) -> list[str]:
    return [
        label,
        _cell(f["auc"]),
        _cell(f["balanced_accuracy"]),
        _cell(f["night_se_mae"], 2),
        _cell(f.get("rounds_to_99pct_auc")),
    ]


def _strategy_label(name: str, options: dict[str, Any]) -> str:
    return {
        "fedprox": f"fedprox (μ = {options['proximal_mu']:g})",
        "fedtrimmedavg": f"fedtrimmedavg (β = {options['trimmed_beta']:g})",
        "krum": f"krum (f = {options['krum_malicious_nodes']})",
    }.get(name, name)


def federated(record: Record) -> str:
    figures = record["figures"]
    compare = figures["compare"]
    strategies = [
        k for k in ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum") if k in figures
    ]
    dp = [f"dp_eps_{e:g}" for e in compare["dp_epsilons"] if f"dp_eps_{e:g}" in figures]
    rows = [
        _scores(_strategy_label(k, compare["strategy_options"]), figures[k]) for k in strategies
    ]
    rows += [
        _scores(f"fedavg + DP ε = {k[7:]} (σ = {figures[k]['sigma']:.3g})*", figures[k]) for k in dp
    ]
    rows.append(_scores("centralised (same folds)", figures["centralised_compare"]))
    seconds = sum(figures[k]["seconds"] for k in (*strategies, *dp))
    lead = (
        f"{compare['folds']} folds × {compare['rounds']} rounds × "
        f"{compare['local_iterations']} gradient steps, one run, {seconds:.0f} s in all:"
    )
    header = ["federated", "AUC", "balanced accuracy", "SE MAE", "rounds to 99%"]
    return "\n\n".join(
        [
            lead,
            table(header, "lrrrr", rows),
            _federated_text(figures, strategies, dp),
            provenance(record),
        ]
    )


def _federated_text(figures: dict[str, Any], strategies: list[str], dp: list[str]) -> str:
    """How each row compares with FedAvg, and the main comparison of the same run."""
    parts = []
    if "fedavg" in figures:
        base = figures["fedavg"]["auc"]
        others = [f"{k} {signed(figures[k]['auc'] - base)}" for k in strategies if k != "fedavg"]
        costs = [f"ε = {k[7:]} {signed(figures[k]['auc'] - base)}" for k in reversed(dp)]
        best = max(strategies, key=lambda k: figures[k]["auc"])
        parts.append(
            f"AUC against FedAvg's {base:.3f}: {', '.join(others)}; with DP "
            f"{', '.join(costs) or 'not run'}. The highest AUC of the strategies: {best}."
        )
    if "main" in figures:
        main, setup = figures["main"], figures["main"]["setup"]
        parts.append(
            f"The main comparison of the same run ({setup['folds']} folds × {setup['rounds']} "
            f"rounds, {main['seconds']:.0f} s; [Results](#results)): AUC federated "
            f"{main['federated']['auc']:.4f}, centralised {main['centralised']['auc']:.4f}, "
            f"local-only {main['local_only']['auc']:.3f}; night SE MAE federated "
            f"{main['federated']['night_se_mae']:.2f} points."
        )
    return " ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value:.2g} s"


def qemu_round(record: Record) -> str:
    figures = record["figures"]
    results, ratios = figures["results"], figures["ratio_arm64_over_amd64"]
    names = {
        key: label.format(windows=results["amd64"]["windows"], iterations=figures["iterations"])
        for key, label in QEMU_PHASES.items()
    }
    rows = [
        [
            names[key],
            _seconds(results["amd64"][key]),
            _seconds(results["arm64"][key]),
            f"{times(ratios[key])}×",
        ]
        for key in QEMU_PHASES
    ]
    return (
        f"Subject {figures['subject']}, median of {figures['repeats']}, load average "
        f"{figures['loadavg']:.1f} at the start:\n\n"
        + table(["phase", "amd64 native", "arm64 under QEMU", "ratio"], "llll", rows)
        + "\n\n"
        + provenance(record)
    )


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
            f"**{sent:,}** ({figures['ratio_to_goal']:.1f}× the goal)",
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
    return "\n\n".join([runs, lead, byte_table, provenance(record)])


def scale(record: Record) -> str:
    figures = record["figures"]
    rows = []
    for run in figures["runs"]:
        rounds = run["round_seconds"]
        later = sum(rounds[1:]) / len(rounds[1:]) if len(rounds) > 1 else rounds[0]
        rows.append(
            [
                f"{run['boards']:,}",
                run["variant"].replace("-", " "),
                f"{rounds[0]:.1f} s",
                f"{later:.1f} s",
                f"{later / run['boards'] * 1000:.0f} ms",
                f"{run['peak_rss_mb'] / 1000:.2f} GB",
            ]
        )
    header = [
        "boards",
        "dispatch",
        "round 1 (actors start)",
        "later rounds",
        "per board",
        "peak RSS (tree)",
    ]
    p = figures["partition"]
    return (
        table(header, "rlrrrr", rows)
        + "\n\n"
        + f"{figures['boards']:,} virtual boards prepared in {p['prepare_seconds']:.0f} s: "
        f"{p['windows_mean']:.0f} windows each on average, Poor share per board from "
        f"{p['poor_share_min']:.2g} to {p['poor_share_max']:.2g} (median "
        f"{p['poor_share_median']:.2f}; {p['boards_without_poor']} boards without a Poor "
        f"window). The ClientApp alone (in process, one BLAS thread) costs "
        f"{figures['clientapp_s'] * 1000:.1f} ms per board for train + evaluate. "
        + provenance(record)
    )


def real_nodes(record: Record) -> str:
    f = record["figures"]
    rows = [
        [str(i), f"{s:.1f} s", str(t), str(e)]
        for i, (s, t, e) in enumerate(
            zip(f["round_seconds"], f["train_nodes"], f["eval_nodes"], strict=True), start=1
        )
    ]
    start, peak = f["superlink_rss_start_mb"], f["superlink_rss_peak_mb"]
    growth = f"{peak / start:.2f}×" if start else "–"
    return (
        table(["round", "time", "train nodes", "eval nodes"], "rrrr", rows)
        + "\n\n"
        + f"{f['nodes']} nodes, {f['rounds']} rounds, server exit {f['server_exit']}; the run "
        f"took {f['run_seconds']:.0f} s. SuperLink RSS: {start:.0f} MB when the run began, "
        f"peak {peak:.0f} MB ({growth}). The server tree peaked at "
        f"{f['server_tree_peak_mb']:.0f} MB. The {f['nodes']} nodes' trees peaked at "
        f"{f['nodes_tree_peak_mb'] / 1000:.2f} GB together, "
        f"{f['nodes_tree_peak_mb'] / f['nodes']:.0f} MB per node. " + provenance(record)
    )
