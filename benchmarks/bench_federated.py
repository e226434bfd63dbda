"""Federated vs centralised vs local-only, each strategy, personalisation and DP levels.

Not a test: it prints the tables (and one final JSON line with every figure) and the command
that produced them. Every row comes from ``sleepfed.server.research.evaluate.evaluate``: the
boards' own
ClientApp over one real SQLite buffer per subject, leave-subjects-out folds.

    python benchmarks/bench_federated.py --data ../shared/data

``--data`` is the shared data folder (its ``walch2019/``) or a Walch-format folder itself.
The main table uses ``--folds``/``--rounds``; the strategy and DP rows use
``--compare-folds``/``--compare-rounds`` (fewer, to keep the run short on a shared
machine). DP: central DP with client-side clipping as the server runs it
(sleepfed.server.app.privacy:
equal weights, Flower's ``DifferentialPrivacyClientSideFixedClipping``, the board's
clipping mod), σ chosen so that the ``--compare-rounds`` rounds spend ε at δ = 1e-5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import record

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sleepfed.model import objective
from sleepfed.server.app.privacy import PrivacySettings, noise_multiplier_for
from sleepfed.server.app.strategies import STRATEGIES, StrategySettings
from sleepfed.server.research.evaluate import evaluate, format_table
from sleepfed.server.research.methods import EvaluationSettings

DP_EPSILONS = (1.0, 4.0, 8.0)
DP_DELTA = 1e-5
# The strategies' options in the comparison rows (FedTrimmedAvg keeps its default β).
STRATEGY_OPTIONS: dict[str, Any] = {"proximal_mu": 0.1, "krum_malicious_nodes": 1}


def _walch_folder(data: Path) -> Path:
    return data / "walch2019" if (data / "walch2019").is_dir() else data


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _row(name: str, figures: dict[str, Any], seconds: float) -> str:
    return (
        f"| {name} | {_cell(figures['auc'])} | {_cell(figures['balanced_accuracy'])} | "
        f"{_cell(figures['night_se_mae'], 2)} | {_cell(figures.get('rounds_to_99pct_auc'))} | "
        f"{seconds:.0f} |"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--local-iterations", type=int, default=objective.DEFAULT_STEPS, help="gradient steps"
    )
    parser.add_argument("--learning-rate", type=float, default=objective.DEFAULT_LEARNING_RATE)
    parser.add_argument("--compare-folds", type=int, default=3)
    parser.add_argument("--compare-rounds", type=int, default=10)
    parser.add_argument("--dp-clipping-norm", type=float, default=1.0)
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument(
        "--dp-only", action="store_true", help="only the DP rows (and the centralised reference)"
    )
    return parser.parse_args(argv)


def main_table(folder: Path, args: argparse.Namespace, training: dict[str, Any]) -> dict[str, Any]:
    """Federated vs centralised vs local-only with ``--folds``/``--rounds``, printed."""
    started = time.perf_counter()
    main_settings = EvaluationSettings(folds=args.folds, rounds=args.rounds, **training)
    main_result = evaluate(folder, main_settings)
    print(format_table(main_result))
    print()
    return {**main_result, "seconds": time.perf_counter() - started}


def strategy_rows(folder: Path, compare: dict[str, Any], figures: dict[str, Any]) -> None:
    """One row per strategy (into ``figures``), printed as it comes."""
    for name in STRATEGIES:
        started = time.perf_counter()
        result = evaluate(
            folder,
            EvaluationSettings(**compare, strategy=StrategySettings(name=name, **STRATEGY_OPTIONS)),
        )
        seconds = time.perf_counter() - started
        figures["centralised_compare"] = result["centralised"]
        figures[name] = {**result["federated"], "seconds": seconds}
        print(_row(name, result["federated"], seconds), flush=True)


def dp_rows(
    folder: Path, args: argparse.Namespace, compare: dict[str, Any], figures: dict[str, Any]
) -> None:
    """FedAvg with central DP at each ε (into ``figures``), printed as it comes."""
    for epsilon in DP_EPSILONS:
        label = f"fedavg + DP ε={epsilon:g}"
        if args.skip_dp:
            print(f"| {label} | skipped | | | | |")
            continue
        sigma = noise_multiplier_for(epsilon, DP_DELTA, args.compare_rounds)
        privacy = PrivacySettings(
            dp=True,
            clipping_norm=args.dp_clipping_norm,
            noise_multiplier=sigma,
            delta=DP_DELTA,
        )
        started = time.perf_counter()
        result = evaluate(
            folder,
            EvaluationSettings(**compare, privacy=privacy),
        )
        seconds = time.perf_counter() - started
        figures.setdefault("centralised_compare", result["centralised"])
        figures[f"dp_eps_{epsilon:g}"] = {**result["federated"], "sigma": sigma, "seconds": seconds}
        print(_row(f"{label} (σ={sigma:.2f})", result["federated"], seconds), flush=True)


def compare_setup(args: argparse.Namespace, compare: dict[str, Any]) -> dict[str, Any]:
    """What the strategy and DP rows ran with (the results file keeps it for the docs)."""
    return {
        **compare,
        "strategy_options": {
            **STRATEGY_OPTIONS,
            "trimmed_beta": StrategySettings().trimmed_beta,
        },
        "dp_epsilons": list(DP_EPSILONS),
        "dp_delta": DP_DELTA,
        "dp_clipping_norm": args.dp_clipping_norm,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    folder = _walch_folder(Path(args.data))
    training: dict[str, Any] = {
        "local_iterations": args.local_iterations,
        "learning_rate": args.learning_rate,
    }
    figures: dict[str, Any] = {"bench": "federated"}
    if not args.dp_only:
        figures["main"] = main_table(folder, args, training)

    compare = {"folds": args.compare_folds, "rounds": args.compare_rounds, **training}
    print(
        f"Strategies and DP: {args.compare_folds} folds, {args.compare_rounds} rounds x "
        f"{args.local_iterations} gradient steps of {args.learning_rate} (federated model; "
        "centralised reference of the same folds in the last row)"
    )
    print("| federated | AUC | bal. acc. | SE MAE (pts) | rounds to 99% | seconds |")
    print("|---|---|---|---|---|---|")
    if not args.dp_only:
        strategy_rows(folder, compare, figures)
    dp_rows(folder, args, compare, figures)
    print(_row("centralised (reference)", figures.get("centralised_compare", {}), 0.0))
    print()
    print("command: python benchmarks/bench_federated.py " + " ".join(sys.argv[1:] or argv or []))
    figures["compare"] = compare_setup(args, compare)
    print(json.dumps(figures, default=float))
    record.save(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
