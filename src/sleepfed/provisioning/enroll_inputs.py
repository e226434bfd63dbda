"""The checks of ``sleepfed-enroll``'s flags, all made before anything is changed: a value
that passes cannot add keys to the agent config or make the agent fail at its next start."""

from __future__ import annotations

import argparse
import ipaddress
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sleepfed.board.nights.schedule import ParticipationWindow
from sleepfed.provisioning.request import validate_board_id

# fullmatch, not match with "$": "$" also matches before a trailing newline.
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
# IANA zone names are ASCII path segments; anything else is refused before zoneinfo sees it.
_ZONE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _check_ipv6(host: str, text: str) -> None:
    """``host`` is ``[IPv6]`` without a zone id ("%eth0": ipaddress accepts any text after it)."""
    try:
        if "%" in host:
            raise ValueError
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        raise ValueError(f"{host} is not an IPv6 address, in {text!r}") from None


def validate_server(text: str) -> str:
    """``HOST:PORT``: a DNS name, an IPv4 address or ``[IPv6]``, and a port 1..65535."""
    host, colon, port = text.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 1..65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        _check_ipv6(host, text)
        return text
    if _is_ipv4(host):
        return text
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
