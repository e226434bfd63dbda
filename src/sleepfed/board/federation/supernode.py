"""The board's Flower SuperNode as a child process: its command line, and what its output
(``supernode.log`` in the state directory) says about how it is doing."""

from __future__ import annotations

from pathlib import Path

from sleepfed.board.service.config import FederationConfig
from sleepfed.common.flower_process import flower_bin

# Text in the SuperNode's own output (this attempt's part of its log) that means retrying
# cannot help: authentication refused (exit code 305: "Failed to activate SuperNode", an
# unknown or revoked key), TLS verification, permission denied.
PERMANENT_MARKERS = (
    "Exit Code: 305",
    "Failed to activate SuperNode",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
)

# Text in the SuperNode's output, while it runs, that means it is hurt without exiting. Flower's
# SuperNode does not retry an HTTP 500 from the SuperLink (e.g. "database is locked" in its
# SQLite state under load): a failed push drops the board's reply, and a failed pull ends the
# node's pulling while its process stays up, so it would never see another message.
REPLY_LOST_MARKER = "Failed to send message"
WEDGED_MARKER = "/v1/fleet/pull-messages"


def node_faults(text: str) -> tuple[int, bool]:
    """(replies the node failed to send, whether its pulling has ended) in SuperNode output."""
    lines = text.splitlines()
    lost = sum(REPLY_LOST_MARKER in line for line in lines)
    wedged = any(WEDGED_MARKER in line and "ERROR" in line for line in lines)
    return lost, wedged


def supernode_command(config: FederationConfig, buffer_path: Path) -> list[str]:
    command = [flower_bin("flower-supernode"), "--superlink", config.server]
    if config.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(config.root_certificates)]
    if config.auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(config.auth_private_key)]
    command += [
        "--port",
        str(config.supernode_port),
        "--node-config",
        f'buffer-path="{buffer_path}"',
    ]
    return command


def log_tail(path: Path, since: int, size: int = 4000) -> str:
    """The last ``size`` bytes of the log written after offset ``since``."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(path.stat().st_size - size, since))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def whole_lines_from(path: Path, offset: int) -> bytes | None:
    """The complete lines of the log written after ``offset`` (a line still being written
    waits for the next read), or None if the log cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except OSError:
        return None
    return chunk[: chunk.rfind(b"\n") + 1]
