"""GLib timers through ctypes: dbusmock's server runs a bare libglib main loop (no PyGObject)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

_GSourceFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_glib: Any = None
_live_callbacks: dict[int, Any] = {}  # id -> ctypes callback (they are not hashable)
_retired_callbacks: list[Any] = []  # finished, but maybe still on the C stack: freed on next add

log = logging.getLogger(__name__)


def timeout_add(delay_ms: int, func: Callable[[], object]) -> None:
    """Call ``func()`` from the server's main loop every ``delay_ms`` while it returns True."""
    global _glib
    if _glib is None:
        _glib = ctypes.cdll.LoadLibrary("libglib-2.0.so.0")
        _glib.g_timeout_add.argtypes = [ctypes.c_uint, _GSourceFunc, ctypes.c_void_p]
        _glib.g_timeout_add.restype = ctypes.c_uint
    _retired_callbacks.clear()

    def run(_data: object) -> int:
        try:
            again = bool(func())
        except Exception:  # a timer must never kill the server
            log.exception("stand-in timer failed")
            again = False
        if not again:
            _retired_callbacks.append(_live_callbacks.pop(id(callback), None))
        return int(again)  # G_SOURCE_CONTINUE / G_SOURCE_REMOVE

    callback = _GSourceFunc(run)
    _live_callbacks[id(callback)] = callback  # keep the C callback alive while GLib may call it
    _glib.g_timeout_add(delay_ms, callback, None)


def later(delay_ms: int, func: Callable[[], object]) -> None:
    """Run ``func()`` once from the server's main loop after ``delay_ms`` (now if that is 0)."""
    if delay_ms <= 0:
        func()
        return

    def once() -> bool:
        func()
        return False

    timeout_add(delay_ms, once)
