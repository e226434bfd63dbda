"""The generated sections about federations: the strategies and DP evaluation
(docs/evaluation.md), a board's round under QEMU (docker/README.md), and the scale and
real-node runs (docs/benchmarks.md), each made from its ``benchmarks/results/<bench>.json``
(the load runs: sleepfed_tools.bench_tables_load)."""

from __future__ import annotations

from typing import Any

from sleepfed_tools.bench_tables_format import Record, provenance, signed, table, times

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


def _hours(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} h"


def time_zones(record: Record) -> str:
    """FedAvg and FedBuff across time zones on a simulated clock (bench_time_zones.py)."""
    f = record["figures"]
    s = f["settings"]
    rows = []
    for fold, row in enumerate(f["per_fold"]):
        avg, buff = row["fedavg"], row["fedbuff"]
        rows.append(
            [
                str(fold),
                f"{avg['final_auc']:.3f} / {buff['final_auc']:.3f}",
                f"{_hours(avg['hours_to_target'])} / {_hours(buff['hours_to_target'])}",
                f"{avg['trainings_to_target'] or '–'} / {buff['trainings_to_target'] or '–'}",
                f"{avg['rounds_at_timeout']} of {avg['rounds']} / 0 of {buff['versions']}",
                str(buff["rejected_stale"]),
            ]
        )
    avg, buff = f["means"]["fedavg"], f["means"]["fedbuff"]
    rows.append(
        [
            "**mean**",
            f"**{avg['final_auc']:.3f} / {buff['final_auc']:.3f}** ({signed(f['auc_difference'])})",
            f"**{_hours(avg['hours_to_target'])} / {_hours(buff['hours_to_target'])}** "
            f"({f['hours_ratio']:.2f}×)",
            f"{avg['trainings_to_target']:.0f} / {buff['trainings_to_target']:.0f}",
            f"{avg['rounds_at_timeout']:.0f} / 0",
            "",
        ]
    )
    header = [
        "fold",
        "last model's AUC, FedAvg / FedBuff",
        "simulated hours to 0.99 × FedAvg's last AUC",
        "board trainings to it",
        "rounds at timeout / versions at timeout",
        "FedBuff replies too stale",
    ]
    lead = (
        f"{f['boards']} virtual boards in {len(s['zones'])} time zones (UTC{min(s['zones']):+g} to "
        f"UTC{max(s['zones']):+g}), online {s['window'][0]:02.0f}:00–{s['window'][1]:02.0f}:00 "
        f"local time, a training {s['train_seconds']:.0f} s ({s['slow_share']:.0%} of the "
        f"boards {s['slow_factor']:g}× longer), {s['horizon_hours']:g} simulated hours; FedAvg "
        f"with min_nodes {s['min_nodes']} and a {s['round_timeout']:.0f}-s round timeout, "
        f"FedBuff with K = {s['buffer_size']}, max staleness {s['max_staleness']}, server "
        f"learning rate {s['server_learning_rate']:g}; {f['folds']} folds of test people:"
    )
    return "\n\n".join([lead, table(header, "lllrrr", rows), provenance(record)])
