"""The enrollment request: the one line ``sleepfed-enroll`` prints on a board and
``sleepfed-server boards register`` takes, ``sleepfed-enroll-request/1 <board id> <OpenSSH EC
public key>``. Its format and its checks are defined here and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

REQUEST_PREFIX = "sleepfed-enroll-request/1"
BOARD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PUBLIC_KEY = re.compile(r"^ecdsa-sha2-nistp(256|384|521) [A-Za-z0-9+/=]+$")


class RequestError(ValueError):
    """An enrollment request, board id or public key that cannot be registered."""


def validate_board_id(text: str) -> str:
    """``text`` if it is a valid board id, else ValueError saying what one looks like."""
    if not BOARD_ID.fullmatch(text):
        raise RequestError(
            f"board id {text!r}: letters, digits, . _ - (at most 64), first a letter or digit"
        )
    return text


@dataclass(frozen=True)
class EnrollmentRequest:
    board_id: str
    public_key: str

    def line(self) -> str:
        return f"{REQUEST_PREFIX} {self.board_id} {self.public_key}"


def checked_request(board_id: str, public_key: str) -> EnrollmentRequest:
    """A request for ``board_id`` with ``public_key``, both checked."""
    validate_board_id(board_id)  # the rule sleepfed-enroll applies on the board
    if not PUBLIC_KEY.match(public_key):
        raise RequestError(f"board {board_id}: not an OpenSSH EC public key")
    return EnrollmentRequest(board_id, public_key)


def parse_request(text: str) -> EnrollmentRequest:
    """The request in ``text`` (one line), checked."""
    parts = text.strip().split()
    if len(parts) != 4 or parts[0] != REQUEST_PREFIX:
        raise RequestError(f"not an enrollment request: {text.strip()[:80]!r}")
    _, board_id, key_type, key_data = parts
    return checked_request(board_id, f"{key_type} {key_data}")
