"""The buffer's counters sorted into classes: what was accepted, what was rejected and why,
and every kind of failure the board counts. ``status`` and the Prometheus metrics both show
every known class, zeros included, so a script or an alert can rely on the names."""

from __future__ import annotations

from sleepfed.board.federation.outcome import FAILED_OUTCOMES, SessionOutcome
from sleepfed.board.sources.ble_parsing import BleReason
from sleepfed.board.sources.polar_pmd import PmdReason
from sleepfed.board.sources.protocol import RejectReason

REJECTION_CLASSES: tuple[str, ...] = (
    *RejectReason.ALL,
    BleReason.EMPTY,
    BleReason.RESERVED_FLAGS,
    BleReason.WRONG_LENGTH,
    BleReason.TRUNCATED_RR,
    BleReason.BAD_TIME,
    *(reason for name, reason in vars(PmdReason).items() if name.isupper()),
)

# Source events: a lost or refused link, not a rejected reading (counted under their name).
SOURCE_FAILURE_CLASSES: tuple[str, ...] = (
    "source_disconnects",
    "ble_not_found",
    "ble_adapter_missing",
    "ble_aborted",
    "ble_in_progress",
    "ble_connect_failed",
    "ble_notify_failed",
    "ble_link_lost",
    "ble_no_contact",
    "ble_pmd_missing",  # sleepfed.board.sources.ble_pmd
    "ble_pmd_refused",
    "ble_pmd_stalled",
    "ble_battery_unread",  # sleepfed.board.sources.ble_notifications
)

# How a participation session can end without the run finishing (``sessions_<outcome>``).
FAILED_SESSION_OUTCOMES: tuple[str, ...] = tuple(o.value for o in FAILED_OUTCOMES)
SESSION_OUTCOMES: tuple[str, ...] = (
    SessionOutcome.FINISHED.value,
    SessionOutcome.SHUTDOWN.value,
    *FAILED_SESSION_OUTCOMES,
)

# What the agent reads in its running SuperNode's output
# (sleepfed.board.federation.supernode.node_faults).
NODE_FAULT_CLASSES: tuple[str, ...] = (
    "node_replies_lost",  # the SuperNode could not send a reply (the server answered 500)
    "node_restarts",  # the SuperNode's pulling ended on a server error: stopped and restarted
)

FAILURE_CLASSES: tuple[str, ...] = (
    *SOURCE_FAILURE_CLASSES,
    "evicted_readings",
    "federation_retries",
    *NODE_FAULT_CLASSES,
    "model_unusable",
    *(outcome.counter for outcome in FAILED_OUTCOMES),
)


def prefixed(counters: dict[str, int], prefix: str) -> dict[str, int]:
    """``{rest: value}`` of the counters named ``<prefix><rest>``."""
    return {k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)}


def rejection_classes(counters: dict[str, int]) -> dict[str, int]:
    """Every known rejection reason (zeros included) plus any other one counted."""
    counted = prefixed(counters, "rejected_")
    return {reason: counted.get(reason, 0) for reason in REJECTION_CLASSES} | counted


def failure_classes(counters: dict[str, int]) -> dict[str, int]:
    """Every known failure class (zeros included) plus any other source event counted."""
    known = {name: counters.get(name, 0) for name in FAILURE_CLASSES}
    other_ble = {k: v for k, v in counters.items() if k.startswith("ble_") and k not in known}
    return known | {k: v for k, v in other_ble.items() if k != "ble_connects"}
