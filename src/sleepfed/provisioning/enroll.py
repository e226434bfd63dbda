"""``sleepfed-enroll``: make a board ready to join, on the board itself.

Every step is idempotent and says what it did: the system user, the state and config
directories, the board's EC key pair (made here; the private key never leaves, mode 0600),
the server's CA pinned by the SHA-256 fingerprint given out of band, the agent config, the
systemd unit installed and enabled. It ends with the one-line enrollment request for the
operator (``sleepfed-server boards register``). ``--root`` applies it all below another root
(tests, image builds) without touching the running system.

Every input is checked before anything is changed (exit 2, one line naming the flag), and the
agent config is written by a TOML library, so no flag can add keys to it. Every file is
written through ``sleepfed.common.private_files`` (mode set before the first byte, a symlink
planted at
any path we write is refused or never followed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from sleepfed.common.private_files import ensure_directory, ensure_file
from sleepfed.provisioning.enroll_inputs import input_error
from sleepfed.provisioning.enroll_steps import (
    DEFAULT_KEY_CURVE,
    KEY_CURVES,
    UNIT_NAME,
    Report,
    ensure_config,
    ensure_key,
    ensure_user,
    find_unit,
    install_unit,
)
from sleepfed.provisioning.fingerprint import ca_fingerprint, normal_fingerprint
from sleepfed.provisioning.request import EnrollmentRequest

EXIT_REFUSED = 2  # also bad input: argparse's own status for a usage error


class Refused(Exception):
    """Enroll stops before changing anything; the message follows ``sleepfed-enroll: ``."""


def _written_paths(root: Path) -> list[Path]:
    """Every path enroll writes or chmods (the unit's enablement link is made by systemctl)."""
    config_dir = root / "etc" / "sleepfed"
    files = ("node.key", "node.pub", "ca.pem", "agent.toml", "enrollment-request.txt")
    return [
        config_dir,
        root / "var" / "lib" / "sleepfed",
        *(config_dir / name for name in files),
        root / "etc" / "systemd" / "system" / UNIT_NAME,
    ]


def _check_inputs(args: argparse.Namespace, root: Path) -> None:
    """Refuse bad flags and symlinks planted where enroll writes."""
    problem = input_error(args)
    if problem is not None:
        raise Refused(f"{problem}; nothing was changed")
    planted = [p for p in _written_paths(root) if p.is_symlink()]
    if planted:
        raise Refused(
            f"REFUSED: {planted[0]} is a symbolic link (to "
            f"{os.readlink(planted[0])}), not a file enroll made; remove it if it is yours. "
            "Nothing was changed"
        )


def _pinned_ca(args: argparse.Namespace) -> tuple[bytes, str]:
    """The CA file's PEM and fingerprint, refused unless it is the one given out of band."""
    ca_pem = Path(args.ca_file).read_bytes()
    try:
        actual = ca_fingerprint(ca_pem)
    except ValueError as error:
        raise Refused(f"{args.ca_file} is not a PEM certificate: {error}") from error
    if normal_fingerprint(actual) != normal_fingerprint(args.ca_fingerprint):
        raise Refused(
            f"REFUSED: {args.ca_file} has SHA-256 fingerprint {actual}, "
            f"not the one given out of band ({args.ca_fingerprint}); nothing was changed"
        )
    return ca_pem, actual


def _apply(
    args: argparse.Namespace, root: Path, ca_pem: bytes, fingerprint: str, report: Report
) -> str:
    """Every step that changes the board, in order; returns the board's public key line."""
    owner = ensure_user(root, report) if not args.no_system_user else None
    group_owner = (0, owner[1]) if owner else None
    config_dir = root / "etc" / "sleepfed"
    # 0755 root:root, as the unit's ConfigurationDirectory= makes it; what is secret in it
    # protects itself (node.key 0600 sleepfed, agent.toml 0640 root:sleepfed).
    report.step(f"directory {config_dir} (0755)", ensure_directory(config_dir, 0o755, None))
    state_dir = root / "var" / "lib" / "sleepfed"
    report.step(f"directory {state_dir} (0700)", ensure_directory(state_dir, 0o700, owner))
    public_key = ensure_key(config_dir, owner, args.new_key, report, args.key_curve)
    report.step(
        f"server CA pinned ({fingerprint})",
        ensure_file(config_dir / "ca.pem", ca_pem, 0o644, None),
    )
    ensure_config(config_dir, args, group_owner, report)
    if not args.no_unit:
        install_unit(root, find_unit(args.unit_file), report)
    return public_key


def enroll(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    report = Report()
    try:
        _check_inputs(args, root)
        ca_pem, fingerprint = _pinned_ca(args)
    except Refused as refusal:
        print(f"sleepfed-enroll: {refusal}", file=sys.stderr)
        return EXIT_REFUSED
    public_key = _apply(args, root, ca_pem, fingerprint, report)
    request = EnrollmentRequest(args.board_id, public_key).line()
    config_dir = root / "etc" / "sleepfed"
    ensure_file(config_dir / "enrollment-request.txt", (request + "\n").encode(), 0o644, None)
    print("nothing changed: this board was already enrolled" if not report.changed else "done")
    print("Give this enrollment request to the operator (it holds no secret):")
    print(request, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sleepfed-enroll",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--board-id", required=True)
    parser.add_argument("--server", required=True, help="the federation server, HOST:PORT")
    parser.add_argument("--ca-file", required=True, help="the server's CA certificate (PEM)")
    parser.add_argument(
        "--ca-fingerprint",
        required=True,
        help="its SHA-256 fingerprint, from the operator (out of band)",
    )
    parser.add_argument("--root", default="/", help="apply below this root (default /)")
    parser.add_argument("--window", default="02:00-05:00", help="daily participation window")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--max-mb", type=int, default=512)
    parser.add_argument("--new-key", action="store_true", help="a new key pair (after revocation)")
    parser.add_argument(
        "--key-curve",
        choices=sorted(KEY_CURVES),
        default=DEFAULT_KEY_CURVE,
        help="the curve of a new key pair (default p256); an existing key is kept",
    )
    parser.add_argument("--force-config", action="store_true")
    parser.add_argument("--unit-file", help="the sleepfed-agent.service to install")
    parser.add_argument("--no-unit", action="store_true", help="do not install the systemd unit")
    parser.add_argument("--no-system-user", action="store_true", help="do not create the user")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return enroll(args)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        print(f"sleepfed-enroll: {error} {detail.decode(errors='replace')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
