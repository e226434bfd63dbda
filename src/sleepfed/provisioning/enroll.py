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
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.board.nights.schedule import ParticipationWindow
from sleepfed.common.private_files import (
    ensure_directory,
    ensure_file,
    read_no_follow,
    write_atomic,
)
from sleepfed.provisioning import agent_toml as agent_toml_file
from sleepfed.provisioning.request import EnrollmentRequest, validate_board_id

USER = "sleepfed"
UNIT_NAME = "sleepfed-agent.service"
EXIT_REFUSED = 2  # also bad input: argparse's own status for a usage error

# The one board-id rule of the fleet: the server's registry (sleepfed.server.fleet.boards) uses it
# too.
# fullmatch, not match with "$": "$" also matches before a trailing newline.
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
# IANA zone names are ASCII path segments; anything else is refused before zoneinfo sees it.
_ZONE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


def validate_server(text: str) -> str:
    """``HOST:PORT``: a DNS name, an IPv4 address or ``[IPv6]``, and a port 1..65535."""
    host, colon, port = text.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 1..65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        # no zone id ("%eth0"): ipaddress accepts any text after the "%"
        try:
            if "%" in host:
                raise ValueError
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address, in {text!r}") from None
        return text
    try:
        ipaddress.IPv4Address(host)
        return text
    except ValueError:
        pass
    labels = host.split(".")
    if (
        len(host) > 253
        or all(label.isdigit() for label in labels)  # a mistyped IPv4 address
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise ValueError(
            f"host {host!r} is not a DNS name, an IPv4 address or an [IPv6] address, in {text!r}"
        )
    return text


def validate_timezone(text: str) -> str:
    """An IANA time zone that zoneinfo knows (``Europe/Berlin``, ``UTC``)."""
    try:
        if not _ZONE.fullmatch(text):
            raise ValueError
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "Europe"
        raise ValueError(f"no IANA time zone {text!r} (e.g. Europe/Berlin, UTC)") from None
    return text


def validate_window(text: str) -> str:
    """A window the agent's own parser accepts, written exactly as given (so no spaces or
    newlines around it, which that parser would strip)."""
    if text != text.strip():
        raise ValueError(f"no spaces or newlines around the window, got {text!r}")
    ParticipationWindow.parse(text)
    return text


def input_error(args: argparse.Namespace) -> str | None:
    """The first bad flag as one line (``--flag: what is wrong``), or None."""
    checks = (
        ("--board-id", validate_board_id, args.board_id),
        ("--server", validate_server, args.server),
        ("--timezone", validate_timezone, args.timezone),
        ("--window", validate_window, args.window),
    )
    for flag, check, value in checks:
        try:
            check(value)
        except ValueError as error:
            return f"{flag}: {error}"
    if args.max_mb < 0:
        return f"--max-mb: expected 0 (no cap) or more, got {args.max_mb}"
    return None


def ca_fingerprint(pem: bytes) -> str:
    """SHA-256 of the DER certificate, lowercase hex with colons."""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex(":")


def _normal_fingerprint(text: str) -> str:
    return text.strip().lower().replace(":", "").replace(" ", "").removeprefix("sha256")


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)

    def step(self, what: str, changed: bool) -> None:
        self.changes.append(f"{'changed  ' if changed else 'unchanged'} {what}")
        print(self.changes[-1], flush=True)

    @property
    def changed(self) -> bool:
        return any(c.startswith("changed") for c in self.changes)


def _ids(root: Path, name: str) -> tuple[int, int] | None:
    """uid, gid of ``name`` from ``root``'s /etc/passwd (not this machine's)."""
    passwd = root / "etc" / "passwd"
    if not passwd.exists():
        return None
    for line in passwd.read_text().splitlines():
        parts = line.split(":")
        if len(parts) > 3 and parts[0] == name:
            return int(parts[2]), int(parts[3])
    return None


def ensure_user(root: Path, report: Report) -> tuple[int, int] | None:
    if _ids(root, USER) is None:
        if shutil.which("useradd") is None:
            report.step(f"system user {USER}: no useradd here, skipped", False)
            return None
        prefix = [] if root == Path("/") else ["--prefix", str(root)]
        subprocess.run(
            [
                "useradd",
                *prefix,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/sleepfed",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ],
            check=True,
            capture_output=True,
        )
        report.step(f"system user {USER} created", True)
    else:
        report.step(f"system user {USER}", False)
    groups = (root / "etc" / "group").read_text().splitlines()
    for group in ("dialout", "bluetooth"):
        line = next((g for g in groups if g.split(":")[0] == group), None)
        if line is None:
            continue
        members = line.split(":")[3].split(",") if line.count(":") >= 3 else []
        if USER in members:
            report.step(f"{USER} in group {group}", False)
            continue
        prefix = [] if root == Path("/") else ["--prefix", str(root)]
        subprocess.run(["usermod", *prefix, "-aG", group, USER], check=True, capture_output=True)
        report.step(f"{USER} added to group {group}", True)
    return _ids(root, USER)


def ensure_key(
    config_dir: Path, owner: tuple[int, int] | None, new_key: bool, report: Report
) -> str:
    private, public = config_dir / "node.key", config_dir / "node.pub"
    pem = read_no_follow(private)  # a symlink planted here is refused, never read through
    if new_key or pem is None:
        if pem is not None:
            os.replace(private, private.with_name("node.key.revoked"))
        pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_atomic(private, pem, 0o600, owner)  # 0600 and the owner's before its first byte
        report.step(f"key pair made on this board: {private} (0600)", True)
    else:
        report.step(f"key pair {private}", ensure_file(private, pem, 0o600, owner))
    key = serialization.load_ssh_private_key(pem, password=None)
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    report.step(f"public key {public}", ensure_file(public, (line + "\n").encode(), 0o644, owner))
    return line


AGENT_TOML_HEADER = (
    "# Written by sleepfed-enroll. Add the board's sensors as [[sources]] tables (README).\n"
)


def agent_toml(args: argparse.Namespace) -> str:
    """The agent config, serialised by tomli_w: a value can never become a key. For the
    checked inputs the bytes are those earlier versions wrote, so an untouched config of an
    enrolled board still counts as unchanged (and an edited one is still kept)."""
    document = {
        "board": {"id": args.board_id, "timezone": args.timezone},
        "buffer": {
            "path": "/var/lib/sleepfed/buffer.db",
            "synchronous": "full",
            "max_mb": args.max_mb,
        },
        "federation": {
            "server": args.server,
            "root_certificates": "/etc/sleepfed/ca.pem",
            "auth_private_key": "/etc/sleepfed/node.key",
            "window": args.window,
            "min_new_labelled_windows": 20,
        },
    }
    return agent_toml_file.render(document, AGENT_TOML_HEADER)


def find_unit(given: str | None) -> Path | None:
    candidates = (
        [Path(given)]
        if given
        else [
            Path(__file__).resolve().parents[3] / "systemd" / UNIT_NAME,
            Path("/opt/sleepfed/systemd") / UNIT_NAME,
        ]
    )
    return next((c for c in candidates if c.is_file()), None)


def install_unit(root: Path, unit: Path | None, report: Report) -> None:
    if unit is None:
        report.step(f"{UNIT_NAME}: not found (give --unit-file), not installed", False)
        return
    target = root / "etc" / "systemd" / "system" / UNIT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    report.step(f"unit {target}", ensure_file(target, unit.read_bytes(), 0o644, None))
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / UNIT_NAME
    if wants.is_symlink():
        report.step(f"{UNIT_NAME} enabled", False)
        return
    if shutil.which("systemctl"):
        command = [
            "systemctl",
            *([] if root == Path("/") else [f"--root={root}"]),
            "enable",
            UNIT_NAME,
        ]
        subprocess.run(command, check=True, capture_output=True)
    else:
        wants.parent.mkdir(parents=True, exist_ok=True)
        wants.symlink_to(f"/etc/systemd/system/{UNIT_NAME}")
    report.step(f"{UNIT_NAME} enabled", True)


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


def enroll(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    report = Report()
    problem = input_error(args)
    if problem is not None:
        print(f"sleepfed-enroll: {problem}; nothing was changed", file=sys.stderr)
        return EXIT_REFUSED
    planted = [p for p in _written_paths(root) if p.is_symlink()]
    if planted:
        print(
            f"sleepfed-enroll: REFUSED: {planted[0]} is a symbolic link (to "
            f"{os.readlink(planted[0])}), not a file enroll made; remove it if it is yours. "
            "Nothing was changed",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    ca_pem = Path(args.ca_file).read_bytes()
    try:
        actual = ca_fingerprint(ca_pem)
    except ValueError as error:
        print(f"sleepfed-enroll: {args.ca_file} is not a PEM certificate: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if _normal_fingerprint(actual) != _normal_fingerprint(args.ca_fingerprint):
        print(
            f"sleepfed-enroll: REFUSED: {args.ca_file} has SHA-256 fingerprint {actual}, "
            f"not the one given out of band ({args.ca_fingerprint}); nothing was changed",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    owner = ensure_user(root, report) if not args.no_system_user else None
    group_owner = (0, owner[1]) if owner else None
    config_dir = root / "etc" / "sleepfed"
    # 0755 root:root, as the unit's ConfigurationDirectory= makes it; what is secret in it
    # protects itself (node.key 0600 sleepfed, agent.toml 0640 root:sleepfed).
    report.step(f"directory {config_dir} (0755)", ensure_directory(config_dir, 0o755, None))
    state_dir = root / "var" / "lib" / "sleepfed"
    report.step(f"directory {state_dir} (0700)", ensure_directory(state_dir, 0o700, owner))
    public_key = ensure_key(config_dir, owner, args.new_key, report)
    report.step(
        f"server CA pinned ({actual})",
        ensure_file(config_dir / "ca.pem", ca_pem, 0o644, None),
    )
    config_path = config_dir / "agent.toml"
    wanted = agent_toml(args).encode()
    current = read_no_follow(config_path)
    if current is not None and current != wanted and not args.force_config:
        report.step(f"config {config_path} kept (yours differs; --force-config rewrites)", False)
    else:
        report.step(f"config {config_path}", ensure_file(config_path, wanted, 0o640, group_owner))
    if not args.no_unit:
        install_unit(root, find_unit(args.unit_file), report)
    request = EnrollmentRequest(args.board_id, public_key).line()
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
