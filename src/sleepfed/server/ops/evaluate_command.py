"""``sleepfed-server evaluate``: federated vs centralised vs local-only training on a
Walch-format folder (sleepfed.server.research.evaluate), printed as a table or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sleepfed.server.ops.exit_codes import EXIT_CONFIG


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sleepfed.server.app.strategies import StrategySettings
    from sleepfed.server.research.evaluate import EvaluationError, evaluate, format_table
    from sleepfed.server.research.methods import EvaluationSettings

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("flwr").setLevel(logging.ERROR)  # one INFO line per round otherwise
    subjects = [s for s in (args.subjects or "").replace(",", " ").split() if s] or None
    try:
        settings = EvaluationSettings(
            folds=args.folds,
            rounds=args.rounds,
            local_iterations=args.local_iterations,
            learning_rate=args.learning_rate,
            strategy=StrategySettings(name=args.strategy),
            seed=args.seed,
        )
        result = evaluate(Path(args.data), settings, subjects)
    except EvaluationError as error:
        print(f"sleepfed-server evaluate: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result) if args.json else format_table(result))
    return 0
