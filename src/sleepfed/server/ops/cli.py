"""``sleepfed-server``: run the federation, inspect and roll back its history, make certificates."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Callable

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.model import objective
from sleepfed.server.ops.config import ConfigError, load_config
from sleepfed.server.ops.evaluate_command import cmd_evaluate
from sleepfed.server.ops.exit_codes import EXIT_CONFIG, EXIT_STATE
from sleepfed.server.ops.fleet_commands import cmd_boards, cmd_certs
from sleepfed.server.ops.history_commands import cmd_history, cmd_report, cmd_rollback, cmd_status
from sleepfed.server.ops.run_command import cmd_run
from sleepfed.server.ops.state_owner import hand_back

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "history": cmd_history,
    "rollback": cmd_rollback,
    "boards": cmd_boards,
    "certs": cmd_certs,
    "evaluate": cmd_evaluate,
}


def _add_federation_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``run`` and the commands that read or roll back its history."""
    run = sub.add_parser("run", help="start the SuperLink and run the federation")
    run.add_argument("--config", required=True)
    run.add_argument("--once", action="store_true", help="exit after one run")
    run.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
    status = sub.add_parser(
        "status",
        help="SuperLink, last run, rounds, boards; exit 0 healthy, 1 SuperLink down, "
        "2 config error, 3 last run failed or interrupted or history salvaged in the last day, "
        "4 history or registry unusable",
    )
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true")
    report = sub.add_parser("report", help="an HTML page with plots of every round")
    report.add_argument("--config", required=True)
    report.add_argument("--out", required=True, help="the HTML file to write")
    history = sub.add_parser("history", help="every round's metrics")
    history.add_argument("--config", required=True)
    history.add_argument("--json", action="store_true")
    rollback = sub.add_parser("rollback", help="mark rounds after N as rolled back")
    rollback.add_argument("--config", required=True)
    rollback.add_argument("--to-round", type=int, required=True)


def _add_fleet_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    boards = sub.add_parser("boards", help="enrolled boards: register, list, revoke")
    boards_sub = boards.add_subparsers(dest="action", required=True)
    register = boards_sub.add_parser("register", help="from enrollment requests (files or CSV)")
    register.add_argument("--config", required=True)
    register.add_argument("requests", nargs="*", help="files holding one request line each")
    register.add_argument("--csv", help="a fleet: CSV with columns board_id,public_key")
    listing = boards_sub.add_parser("list")
    listing.add_argument("--config", required=True)
    listing.add_argument("--json", action="store_true")
    revoke = boards_sub.add_parser("revoke", help="refuse these boards from now on")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("boards", nargs="+")
    recover = boards_sub.add_parser(
        "recover",
        help="a damaged registry: show what can be salvaged; with --yes, move it aside and "
        "keep that",
    )
    recover.add_argument("--config", required=True)
    recover.add_argument("--yes", action="store_true", help="do it (after checking the list)")
    certs = sub.add_parser("certs", help="make a CA and a server certificate (demo, tests)")
    certs.add_argument("--out", required=True)
    certs.add_argument("--host", action="append", default=None, help="SAN host (repeatable)")
    certs.add_argument(
        "--group",
        help="the service's group (sleepfed): it may then read server.key (0640) and enter "
        "the folder; ca.key stays the owner's alone",
    )


def _add_evaluate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluation = sub.add_parser(
        "evaluate",
        help="federated vs centralised vs local-only on a Walch-format folder "
        "(leave-subjects-out folds, one board per subject)",
    )
    evaluation.add_argument("--data", required=True, help="folder in the Walch 2019 format")
    evaluation.add_argument("--json", action="store_true", help="one JSON object")
    evaluation.add_argument("--folds", type=int, default=5)
    evaluation.add_argument("--rounds", type=int, default=20)
    evaluation.add_argument(
        "--local-iterations",
        type=int,
        default=objective.DEFAULT_STEPS,
        help="gradient steps per board per round",
    )
    evaluation.add_argument(
        "--learning-rate",
        type=float,
        default=objective.DEFAULT_LEARNING_RATE,
        help="size of a board's gradient step",
    )
    evaluation.add_argument(
        "--strategy",
        default="fedavg",
        help="fedavg, fedprox, fedmedian, fedtrimmedavg, krum, fedbuff",
    )
    evaluation.add_argument("--subjects", help="only these subject ids (comma-separated)")
    evaluation.add_argument("--seed", type=int, default=0, help="how subjects fall into folds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepfed-server", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_federation_commands(sub)
    _add_fleet_commands(sub)
    _add_evaluate_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything the server makes is private (superlink.db holds messages and node keys,
    # boards.db the fleet's keys, logs, certs' keys), whatever umask it was started with;
    # its children (SuperLink, ServerApp, flwr) inherit this. Public certs are chmod-ed.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    if getattr(args, "host", None) is None and args.command == "certs":
        args.host = ["127.0.0.1", "localhost"]
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # the Control API client (sleepfed.server.fleet.control_api) would log each registration's
    # request at INFO; the registry logs what it did
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return HANDLERS[args.command](args)
    except ConfigError as error:
        print(f"sleepfed-server: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StateFileError as error:
        print(f"sleepfed-server {args.command}: {error}", file=sys.stderr)
        return EXIT_STATE
    except sqlite3.Error as error:  # a state file that broke past the checks made at its open
        print(f"sleepfed-server {args.command}: a state file failed: {error}", file=sys.stderr)
        return EXIT_STATE
    finally:
        if getattr(args, "config", None) and os.geteuid() == 0:
            _hand_back_state(args.config)


def _hand_back_state(config_path: str) -> None:
    """Run as root: what the command made in the state folder goes to the folder's owner
    (sleepfed.server.ops.state_owner says why)."""
    try:
        state_dir = load_config(config_path).state_dir
    except (ConfigError, OSError):
        return
    hand_back(state_dir)


if __name__ == "__main__":
    sys.exit(main())
