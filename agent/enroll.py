"""``sleepfed-enroll``: make a board ready to join, on the board itself.

Every step is idempotent and says what it did: the system user, the state and config
directories, the board's EC key pair (made here; the private key never leaves, mode 0600),
the server's CA pinned by the SHA-256 fingerprint given out of band, the agent config, the
systemd unit installed and enabled. It ends with the one-line enrollment request for the
operator (``sleepfed-server boards register``). ``--root`` applies it all below another root
(tests, image builds) without touching the running system.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

USER = "sleepfed"
REQUEST_PREFIX = "sleepfed-enroll-request/1"
UNIT_NAME = "sleepfed-agent.service"
EXIT_REFUSED = 2


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


def _write_if_changed(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> bool:
    if path.exists() and path.read_bytes() == data:
        changed = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
        changed = True
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)
        changed = True
    if owner is not None and (path.stat().st_uid, path.stat().st_gid) != owner:
        os.chown(path, *owner)
        changed = True
    return changed


def _directory(path: Path, mode: int, owner: tuple[int, int] | None) -> bool:
    changed = not path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)
        changed = True
    if owner is not None and (path.stat().st_uid, path.stat().st_gid) != owner:
        os.chown(path, *owner)
        changed = True
    return changed


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
    if new_key or not private.exists():
        if private.exists():
            os.replace(private, private.with_name("node.key.revoked"))
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_if_changed(private, pem, 0o600, owner)
        report.step(f"key pair made on this board: {private} (0600)", True)
    else:
        changed = _write_if_changed(private, private.read_bytes(), 0o600, owner)
        report.step(f"key pair {private}", changed)
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    report.step(
        f"public key {public}", _write_if_changed(public, (line + "\n").encode(), 0o644, owner)
    )
    return line


def agent_toml(args: argparse.Namespace) -> str:
    return f"""# Written by sleepfed-enroll. Add the board's sensors as [[sources]] tables (README).
[board]
id = "{args.board_id}"
timezone = "{args.timezone}"

[buffer]
path = "/var/lib/sleepfed/buffer.db"
synchronous = "full"
max_mb = {args.max_mb}

[federation]
server = "{args.server}"
root_certificates = "/etc/sleepfed/ca.pem"
auth_private_key = "/etc/sleepfed/node.key"
window = "{args.window}"
min_new_labelled_windows = 20
"""


def find_unit(given: str | None) -> Path | None:
    candidates = (
        [Path(given)]
        if given
        else [
            Path(__file__).resolve().parents[1] / "systemd" / UNIT_NAME,
            Path("/opt/sleepfed/systemd") / UNIT_NAME,
        ]
    )
    return next((c for c in candidates if c.is_file()), None)


def install_unit(root: Path, unit: Path | None, report: Report) -> None:
    if unit is None:
        report.step(f"{UNIT_NAME}: not found (give --unit-file), not installed", False)
        return
    target = root / "etc" / "systemd" / "system" / UNIT_NAME
    report.step(f"unit {target}", _write_if_changed(target, unit.read_bytes(), 0o644, None))
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


def enroll(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    report = Report()
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
    report.step(f"directory {config_dir} (0755)", _directory(config_dir, 0o755, None))
    state_dir = root / "var" / "lib" / "sleepfed"
    report.step(f"directory {state_dir} (0700)", _directory(state_dir, 0o700, owner))
    public_key = ensure_key(config_dir, owner, args.new_key, report)
    report.step(
        f"server CA pinned ({actual})",
        _write_if_changed(config_dir / "ca.pem", ca_pem, 0o644, None),
    )
    config_path = config_dir / "agent.toml"
    wanted = agent_toml(args).encode()
    if config_path.exists() and config_path.read_bytes() != wanted and not args.force_config:
        report.step(f"config {config_path} kept (yours differs; --force-config rewrites)", False)
    else:
        report.step(
            f"config {config_path}", _write_if_changed(config_path, wanted, 0o640, group_owner)
        )
    if not args.no_unit:
        install_unit(root, find_unit(args.unit_file), report)
    request = f"{REQUEST_PREFIX} {args.board_id} {public_key}"
    _write_if_changed(config_dir / "enrollment-request.txt", (request + "\n").encode(), 0o644, None)
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
