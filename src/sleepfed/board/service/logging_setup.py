"""Where the agent's log goes: journald with structured fields under systemd, else stderr.

Under systemd (``$JOURNAL_STREAM`` or ``$INVOCATION_ID`` set) and with systemd-python
installed, records go to journald through ``systemd.journal.JournalHandler``; the keys of a
log call's ``extra=`` that are journal field names become fields of the entry:

- ``SOURCE``: the configured source name (``[[sources]] name``);
- ``DEVICE``: the serial port or the BLE device name;
- ``ROUND``: a federation round, where one is known;
- ``ERROR_CLASS``: what went wrong, as counted (``checksum``, ``source_disconnects``,
  ``ble_link_lost``, ``transient``, ``permanent``, ...).

Anywhere else the plain stderr format is kept (the extra keys are then simply unused).
"""

from __future__ import annotations

import logging
import os
import sys

STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FIELDS = ("SOURCE", "DEVICE", "ROUND", "ERROR_CLASS")


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def journal_handler(identifier: str) -> logging.Handler | None:
    """A JournalHandler when systemd-python is importable and we run under systemd."""
    if not under_systemd():
        return None
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER=identifier)


def setup_logging(level: str, identifier: str = "sleepfed-agent") -> str:
    """Configure the root logger; returns ``"journald"`` or ``"stderr"``."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = journal_handler(identifier)
    if handler is not None:
        # journald stamps time, priority and the logger name (LOGGER=) itself.
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.basicConfig(level=numeric, handlers=[handler])
        return "journald"
    logging.basicConfig(level=numeric, format=STDERR_FORMAT, stream=sys.stderr)
    return "stderr"
