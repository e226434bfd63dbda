"""FedAvg against FedBuff across time zones, on a simulated clock
(sleepfed.server.research.time_zones), over folds of real people.

    python benchmarks/bench_time_zones.py --data ../shared/data [--boards 100 --folds 5]

Each fold holds out a fifth of the Walch 2019 subjects as test people; the others' nights
are resampled into ``--boards`` label-skewed virtual boards (research/partitions.py), spread
over 7 time zones (UTC-8 to UTC+9), each online 01:00-05:00 local time; a training takes a
board 120 s of simulated time, 10% of the boards 10x longer. Both strategies run 48
simulated hours on the same fleet. Per fold: the held-out AUC of the last model, the
simulated hours and board trainings until a model first reached 0.99 x FedAvg's last AUC,
the FedAvg rounds that waited out their timeout, FedBuff's versions and stale replies; then
their means. Figures: ``benchmarks/results/time_zones.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import record

from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset
from sleepfed.server.research.partitions import resample_boards
from sleepfed.server.research.time_zones import (
    Curve,
    FleetSettings,
    auc_on,
    make_fleet,
    run_fedavg,
    run_fedbuff,
)

TARGET_SHARE = 0.99


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--boards", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--min-nodes", type=int, default=20, help="FedAvg's min_nodes")
    parser.add_argument("--round-timeout", type=float, default=600.0, help="FedAvg's (s)")
    parser.add_argument("--buffer-size", type=int, default=20, help="FedBuff's K")
    parser.add_argument("--max-staleness", type=int, default=10)
    parser.add_argument("--server-learning-rate", type=float, default=0.5)
    return parser.parse_args(argv)


def _reached(curve: Curve, target: float) -> dict[str, float | None]:
    reached = curve.first_reaching(target)
    return {
        "hours_to_target": round(reached[0], 2) if reached else None,
        "trainings_to_target": reached[1] if reached else None,
        "final_auc": round(curve.points[-1][2], 4),
    }


def run_fold(
    fold: int, test: list[str], nights: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    settings = FleetSettings()
    score = auc_on(
        np.concatenate([nights[s].features[nights[s].labelled] for s in test]),
        np.concatenate([nights[s].labels[nights[s].labelled] for s in test]),
    )
    train = {s: n for s, n in nights.items() if s not in test}
    fleet = make_fleet(resample_boards(train, args.boards, seed=fold), settings, seed=fold)
    initial = model.initial_arrays()
    fedavg = run_fedavg(
        fleet, initial, score, settings, min_nodes=args.min_nodes, round_timeout=args.round_timeout
    )
    fedbuff = run_fedbuff(
        fleet,
        initial,
        score,
        settings,
        buffer_size=args.buffer_size,
        max_staleness=args.max_staleness,
        server_learning_rate=args.server_learning_rate,
    )
    target = TARGET_SHARE * fedavg.points[-1][2]
    return {
        "test_people": test,
        "target_auc": round(target, 4),
        "fedavg": {
            **_reached(fedavg, target),
            "rounds": len(fedavg.points) - 1,
            "rounds_at_timeout": fedavg.timed_out,
            "replies_lost": fedavg.lost,
            "boards_counted": len(fedavg.boards_counted),
        },
        "fedbuff": {
            **_reached(fedbuff, target),
            "versions": len(fedbuff.points) - 1,
            "rounds_at_timeout": 0,
            "rejected_stale": fedbuff.rejected_stale,
            "boards_counted": len(fedbuff.boards_counted),
        },
    }


def _mean(folds: list[dict[str, Any]], strategy: str, key: str) -> float | None:
    values = [f[strategy][key] for f in folds if f[strategy][key] is not None]
    return round(statistics.mean(values), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    walch = args.data / "walch2019" if (args.data / "walch2019").is_dir() else args.data
    began = time.perf_counter()
    nights = walch_dataset(walch)
    order = [str(s) for s in np.random.default_rng(0).permutation(sorted(nights))]
    folds = []
    for fold in range(args.folds):
        folds.append(run_fold(fold, order[fold :: args.folds], nights, args))
        row = folds[-1]
        print(f"fold {fold}: fedavg {row['fedavg']}\n        fedbuff {row['fedbuff']}", flush=True)
    means = {
        strategy: {
            key: _mean(folds, strategy, key)
            for key in ("final_auc", "hours_to_target", "trainings_to_target", "rounds_at_timeout")
        }
        for strategy in ("fedavg", "fedbuff")
    }
    hours = means["fedavg"]["hours_to_target"], means["fedbuff"]["hours_to_target"]
    figures = {
        "bench": "time_zones",
        "boards": args.boards,
        "folds": args.folds,
        "settings": {**vars(args), "data": None, **FleetSettings().__dict__},
        "per_fold": folds,
        "means": means,
        "hours_ratio": round(hours[1] / hours[0], 2) if all(hours) else None,
        "auc_difference": round(
            (means["fedbuff"]["final_auc"] or 0) - (means["fedavg"]["final_auc"] or 0), 4
        ),
        "seconds": round(time.perf_counter() - began),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "per_fold"}))
    record.save(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
