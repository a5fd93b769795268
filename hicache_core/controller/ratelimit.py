"""Rate-limited logging: a backend that fails every page must not log every page.

``RateLimitFilter`` lets through at most ``burst`` records of one message template per
``interval_s`` and each logger; the first record after a quiet spell says how many similar
ones were dropped. The controller installs one on the logger of every backend module it
attaches (``limit_backend_logs``), so the first failures are still seen and a read-only
store no longer writes thousands of lines a second.
"""

from __future__ import annotations

import logging
import threading
import time

#: Records of one template let through per interval, and the interval.
DEFAULT_BURST = 5
DEFAULT_INTERVAL_S = 10.0


class RateLimitFilter(logging.Filter):
    def __init__(self, burst: int = DEFAULT_BURST, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, object], tuple[float, int, int]] = {}  # start, shown, dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            start, shown, dropped = self._windows.get(key, (now, 0, 0))
            if now - start >= self.interval_s:
                if dropped:
                    record.msg = f"{record.msg} [{dropped} similar message(s) suppressed in the last " \
                                 f"{now - start:.0f} s]"
                start, shown, dropped = now, 0, 0
            if shown < self.burst:
                self._windows[key] = (start, shown + 1, dropped)
                return True
            self._windows[key] = (start, shown, dropped + 1)
            return False

    def dropped(self) -> int:
        with self._lock:
            return sum(d for _, _, d in self._windows.values())


_INSTALLED: dict[str, RateLimitFilter] = {}
_INSTALLED_LOCK = threading.Lock()


def limit_backend_logs(module: str) -> RateLimitFilter:
    """Install (once) a ``RateLimitFilter`` on the logger of ``module`` and its package."""
    names = {module, module.split(".")[0]}
    with _INSTALLED_LOCK:
        flt = _INSTALLED.get(module)
        if flt is None:
            flt = RateLimitFilter()
            _INSTALLED[module] = flt
            for name in names:
                logging.getLogger(name).addFilter(flt)
        return flt
