"""Counters of one AIBrix backend, reported by ``get_stats``."""

from __future__ import annotations

import threading
from typing import Any

_COUNTERS = (
    "pages_set",
    "pages_hit",
    "pages_missed",
    "bytes_written",
    "bytes_read",
    "set_errors",
    "get_errors",
    "exists_errors",
    "delete_errors",
    "handles_acquired",
    "handles_released",
    "calls_after_close",
)


class AIBrixCounters:
    """Thread-safe counters plus the last error seen (a short text), for status and metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(_COUNTERS, 0)
        self._last_error: str | None = None

    def add(self, last_error: str | None = None, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta
            if last_error is not None:
                self._last_error = last_error[:300]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._values)
            out["last_error"] = self._last_error
        return out
