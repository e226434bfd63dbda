"""The buffer's problems in the words ``sleepfed-agent status`` prints: a buffer it could not
read at all (exit 4), and a buffer the agent recovered (sleepfed.board.buffer.buffer_recovery).
"""

from __future__ import annotations

import re
import time
from typing import Any

from sleepfed.board.buffer.schema import SCHEMA_VERSION
from sleepfed.board.service.config import AgentConfig
from sleepfed.common.sqlite_recovery import is_corrupt


def recovered_problem(record: dict[str, Any]) -> str:
    lost = record.get("readings_lost")
    return (
        f"the buffer was corrupt ({record.get('problem')}) and was moved aside as "
        f"{record.get('quarantined')} at {_utc(float(record.get('at', 0)))}: "
        f"{record.get('salvaged_readings')} readings salvaged, "
        f"{'an unknown number' if lost is None else lost} lost"
    )


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def unreadable_buffer(config: AgentConfig, error: Exception) -> str:
    """What is wrong with a buffer ``status`` could not read, in one sentence."""
    path = config.buffer_path
    text = str(error)
    if not path.parent.is_dir():
        return f"the buffer's folder {path.parent} does not exist (card unmounted?)"
    if is_corrupt(error):
        kind = "is not a SQLite database" if "not a database" in text else f"is corrupt ({text})"
        return (
            f"the buffer {path} {kind}: the agent moves it aside and salvages it when it "
            "starts (docs/operations.md#a-corrupt-read-only-or-full-card)"
        )
    if "schema version 0," in text:
        return f"{path} is not a sleepfed buffer (another program's SQLite file)"
    found = re.search(r"schema version (\d+)", text)
    if found and int(found.group(1)) > SCHEMA_VERSION:
        return (
            f"the buffer {path} was written by a newer agent (schema version "
            f"{found.group(1)}; this one knows {SCHEMA_VERSION}): upgrade this agent"
        )
    if found:
        return f"the buffer {path} has another schema: {text.split(': ', 1)[-1]}"
    if isinstance(error, PermissionError) or "unable to open" in text:
        return f"the buffer {path} cannot be read by this user ({text})"
    return f"the buffer {path} cannot be read ({text})"
