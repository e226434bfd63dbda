"""``sleepfed-agent``: run the daemon, show its status, record a morning report."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from sleepfed.board.service.config import load_config
from sleepfed.common.config_fields import ConfigError

EXIT_CONFIG = 2


def _setup_logging(level: str) -> None:
    from sleepfed.board.service.logging_setup import setup_logging

    setup_logging(level)


def _cmd_run(args: argparse.Namespace) -> int:
    from sleepfed.board.service.daemon import Daemon

    config = load_config(args.config)
    return Daemon(config).run()


def _cmd_status(args: argparse.Namespace) -> int:
    import sqlite3

    from sleepfed.board.buffer.connection import BufferError
    from sleepfed.board.service import status as board_status
    from sleepfed.board.service.status import as_json, collect, exit_code
    from sleepfed.board.service.status_problems import unreadable_buffer
    from sleepfed.board.service.status_text import render

    config = load_config(args.config)
    if not config.buffer_path.exists() and config.buffer_path.parent.is_dir():
        print(
            f"sleepfed-agent status: no buffer at {config.buffer_path} yet: the agent has not "
            "run on this board",
            file=sys.stderr,
        )
        return board_status.EXIT_NOT_RUNNING
    try:
        status = collect(config)
    except (BufferError, sqlite3.Error, OSError) as error:
        problem = unreadable_buffer(config, error)
        print(f"sleepfed-agent status: {problem}", file=sys.stderr)
        return board_status.EXIT_BUFFER_UNREADABLE
    print(as_json(status) if args.json else render(status))
    return exit_code(status)


def _cmd_label(args: argparse.Namespace) -> int:
    from sleepfed.board.buffer.store import Buffer

    try:
        night = date.fromisoformat(args.night).isoformat()
    except ValueError:
        print(
            f"sleepfed-agent label: --night must be YYYY-MM-DD, got {args.night!r}", file=sys.stderr
        )
        return EXIT_CONFIG
    config = load_config(args.config)
    buffer = Buffer(config.buffer_path, synchronous=config.synchronous)
    try:
        buffer.add_night_report(night, args.quality)
    finally:
        buffer.close()
    print(f"night {night} reported {args.quality}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepfed-agent", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True)
    status = sub.add_parser(
        "status",
        help="show the board's state; exit 0 healthy, 1 not running, 2 config error, 3 degraded, "
        "4 buffer unreadable (corrupt, not ours, newer, no permission, its folder gone)",
    )
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true")
    label = sub.add_parser("label", help="record the person's own morning report")
    label.add_argument("--config", required=True)
    label.add_argument("--night", required=True, help="the night's evening date, YYYY-MM-DD")
    label.add_argument("quality", choices=["good", "poor"])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    handlers = {"run": _cmd_run, "status": _cmd_status, "label": _cmd_label}
    try:
        return handlers[args.command](args)
    except ConfigError as error:
        print(f"sleepfed-agent: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
