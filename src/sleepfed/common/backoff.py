"""The one backoff policy of every part of the board that reconnects (the serial and BLE
sources, the federation session): exponential with full jitter, capped, as tenacity's
``wait_random_exponential`` computes it. Retry ``n`` (1 = the first) waits a uniform random
time in ``[0, min(cap, first * 2**(n - 1))]``: boards that lost the same server or the same
radio at the same moment do not come back in step."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # tenacity is imported on the first retry, not on the daemon's idle path
    from tenacity import RetryCallState, wait_random_exponential


class _Attempt:
    """The one field of tenacity's retry state its waits read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def policy(first: float, cap: float) -> wait_random_exponential:
    """The policy as a tenacity wait (for ``tenacity.Retrying(wait=...)``)."""
    from tenacity import wait_random_exponential

    return wait_random_exponential(multiplier=first, max=cap)


def delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry)."""
    state = cast("RetryCallState", _Attempt(max(1, attempt)))
    return float(policy(first, cap)(state))
