"""The idempotent steps of ``sleepfed-enroll`` that change the board: the system user, the
key pair, the agent config and the systemd unit. Each one prints whether it changed
something, so a second run says "unchanged" throughout."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.common.private_files import ensure_file, read_no_follow, write_atomic
from sleepfed.provisioning import agent_toml as agent_toml_file

USER = "sleepfed"
UNIT_NAME = "sleepfed-agent.service"
AGENT_TOML_HEADER = (
    "# Written by sleepfed-enroll. Add the board's sensors as [[sources]] tables (README).\n"
)


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)

    def step(self, what: str, changed: bool) -> None:
        self.changes.append(f"{'changed  ' if changed else 'unchanged'} {what}")
        print(self.changes[-1], flush=True)

    @property
    def changed(self) -> bool:
        return any(c.startswith("changed") for c in self.changes)


def _prefix(root: Path) -> list[str]:
    """useradd/usermod's flag to act on ``root``'s /etc instead of this machine's."""
    return [] if root == Path("/") else ["--prefix", str(root)]


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


def _create_user(root: Path) -> None:
    subprocess.run(
        [
            "useradd",
            *_prefix(root),
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


def _join_device_groups(root: Path, report: Report) -> None:
    """The user joins the serial and Bluetooth groups that exist, for the board's sensors."""
    groups = (root / "etc" / "group").read_text().splitlines()
    for group in ("dialout", "bluetooth"):
        line = next((g for g in groups if g.split(":")[0] == group), None)
        if line is None:
            continue
        members = line.split(":")[3].split(",") if line.count(":") >= 3 else []
        if USER in members:
            report.step(f"{USER} in group {group}", False)
            continue
        command = ["usermod", *_prefix(root), "-aG", group, USER]
        subprocess.run(command, check=True, capture_output=True)
        report.step(f"{USER} added to group {group}", True)


def ensure_user(root: Path, report: Report) -> tuple[int, int] | None:
    if _ids(root, USER) is None:
        if shutil.which("useradd") is None:
            report.step(f"system user {USER}: no useradd here, skipped", False)
            return None
        _create_user(root)
        report.step(f"system user {USER} created", True)
    else:
        report.step(f"system user {USER}", False)
    _join_device_groups(root, report)
    return _ids(root, USER)


# The node key's curve for a new key. P-256 by default: its public key and signature make
# every request the board sends smaller (docs/benchmarks.md#load); a board enrolled with a
# P-384 key keeps it (an existing key is never replaced but with --new-key).
KEY_CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
DEFAULT_KEY_CURVE = "p256"


def ensure_key(
    config_dir: Path,
    owner: tuple[int, int] | None,
    new_key: bool,
    report: Report,
    curve: str = DEFAULT_KEY_CURVE,
) -> str:
    private, public = config_dir / "node.key", config_dir / "node.pub"
    pem = read_no_follow(private)  # a symlink planted here is refused, never read through
    if new_key or pem is None:
        if pem is not None:
            os.replace(private, private.with_name("node.key.revoked"))
        pem = ec.generate_private_key(KEY_CURVES[curve]).private_bytes(
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


def ensure_config(
    config_dir: Path,
    args: argparse.Namespace,
    group_owner: tuple[int, int] | None,
    report: Report,
) -> None:
    """Write agent.toml unless the operator edited it (then only ``--force-config`` does)."""
    config_path = config_dir / "agent.toml"
    wanted = agent_toml(args).encode()
    current = read_no_follow(config_path)
    if current is not None and current != wanted and not args.force_config:
        report.step(f"config {config_path} kept (yours differs; --force-config rewrites)", False)
    else:
        report.step(f"config {config_path}", ensure_file(config_path, wanted, 0o640, group_owner))


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


def packaged_unit(root: Path) -> Path | None:
    """The unit the Debian package installed (packaging/deb), if any, below ``root``."""
    path = root / "lib" / "systemd" / "system" / UNIT_NAME
    return path if path.is_file() else None


def install_unit(root: Path, unit: Path | None, report: Report) -> None:
    """Install ``unit`` into /etc/systemd/system and enable it. With the Debian package's
    unit in /lib/systemd/system it is only enabled: no copy in /etc shadows the package's
    (its upgrades would never apply), unless ``unit`` differs from it (an operator's own
    unit, given with --unit-file, overrides the package's as systemd's /etc does)."""
    packaged = packaged_unit(root)
    if packaged is not None and (unit is None or unit.read_bytes() == packaged.read_bytes()):
        report.step(f"unit {packaged} (from the sleepfed-agent package)", False)
        link_target = f"/lib/systemd/system/{UNIT_NAME}"
    elif unit is None:
        report.step(f"{UNIT_NAME}: not found (give --unit-file), not installed", False)
        return
    else:
        target = root / "etc" / "systemd" / "system" / UNIT_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        report.step(f"unit {target}", ensure_file(target, unit.read_bytes(), 0o644, None))
        link_target = f"/etc/systemd/system/{UNIT_NAME}"
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
        wants.symlink_to(link_target)
    report.step(f"{UNIT_NAME} enabled", True)
