"""The ``sleepfed-server`` commands that read the history (``status``, ``report``,
``history``) or roll it back (``rollback``), and the one line a round is printed as."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sleepfed.server.app.history import History, RoundRecord
from sleepfed.server.app.privacy import describe_round
from sleepfed.server.ops.config import load_config


def format_round(record: RoundRecord) -> str:
    s, t, e = record.server_metrics, record.train_metrics, record.eval_metrics
    held_out = (
        f"held-out AUC {s['auc']:.3f} acc {s['accuracy']:.3f} bal-acc {s['balanced_accuracy']:.3f} "
        f"({int(s['windows'])} windows)"
        if "auc" in s
        else "no held-out set"
    )
    boards = (
        # a FedBuff version (sleepfed.server.app.fedbuff_run): its updates by staleness
        "staleness "
        + " ".join(
            f"{k.removeprefix('staleness-')}:{int(v)}"
            for k, v in t.items()
            if k.removeprefix("staleness-").isdigit()
        )
        if "staleness-max" in t
        else f"train-loss {t.get('train-loss', float('nan')):.3f}  "
        f"board-eval acc {e.get('eval-accuracy', float('nan')):.3f}"
    )
    return (
        f"round {record.global_round:3d}  "
        f"nodes train {record.train_nodes} eval {record.eval_nodes}  {boards}  {held_out}"
        + describe_round(record.privacy, record.rejected)
        + ("  [rolled back]" if record.rolled_back else "")
    )


def _round_as_dict(r: RoundRecord) -> dict[str, object]:
    return {
        "global_round": r.global_round,
        "run_id": r.run_id,
        "created_at": r.created_at,
        "train_nodes": r.train_nodes,
        "eval_nodes": r.eval_nodes,
        "train_metrics": r.train_metrics,
        "eval_metrics": r.eval_metrics,
        "server_metrics": r.server_metrics,
        "rolled_back": r.rolled_back,
        "rejected": r.rejected,
        "privacy": r.privacy,
    }


def cmd_status(args: argparse.Namespace) -> int:
    from sleepfed.server.ops.status import as_json, collect, exit_code, render

    config = load_config(args.config)
    status = collect(config)
    print(as_json(status) if args.json else render(status))
    return exit_code(status)


def cmd_report(args: argparse.Namespace) -> int:
    from sleepfed.server.ops.report import ReportError, write_report

    config = load_config(args.config)
    try:
        rounds = write_report(config, Path(args.out))
    except ReportError as error:
        print(f"sleepfed-server report: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {rounds} rounds")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    history = History(config.history_path)
    try:
        rounds = history.rounds()
        if args.json:
            print(json.dumps([_round_as_dict(r) for r in rounds], indent=2))
        else:
            for record in rounds:
                print(format_round(record))
            if not rounds:
                print("no rounds yet")
    finally:
        history.close()
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    history = History(config.history_path)
    try:
        count = history.rollback(args.to_round)
    except ValueError as error:
        print(f"sleepfed-server rollback: {error}", file=sys.stderr)
        return 1
    finally:
        history.close()
    print(f"rolled back {count} rounds; the next run starts from round {args.to_round}")
    return 0
