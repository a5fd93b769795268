"""One bounded pool of daemon threads for the controllers' admin work, process-wide.

Creating a backend, registering the host pool with it and the breaker's health probes run
here, with a time bound each, instead of on a new thread per call: a backend constructor
that hangs holds one of ``ADMIN_WORKERS`` threads, not one more thread per attempt. When
every worker is held by such calls, new admin work is refused at once with a message that
says so, instead of queueing behind them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from hicache_core.controller.guard import DaemonPool

T = TypeVar("T")

#: Threads shared by every controller of the process for admin work.
ADMIN_WORKERS = 8


class AdminWorkers:
    """A ``DaemonPool`` that knows how many of its threads are busy; see the module docstring."""

    def __init__(self, workers: int = ADMIN_WORKERS, name: str = "hicache-admin") -> None:
        self.workers = workers
        self._pool = DaemonPool(workers, name)
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def run(self, what: str, fn: Callable[[], T], timeout_s: float,
            cleanup: Callable[[T], None] | None = None) -> T:
        """``fn()`` on a pool thread within ``timeout_s``; a late result goes to ``cleanup``.

        Raises ``TimeoutError`` after ``timeout_s``, ``RuntimeError`` when every worker is
        held by earlier calls that have not returned, and whatever ``fn`` raises.
        """
        with self._lock:
            if self._busy >= self.workers:
                raise RuntimeError(
                    f"{what}: all {self.workers} admin workers are held by earlier backend calls that have "
                    "not returned (a backend constructor or health check hangs); retry later"
                )
            self._busy += 1

        def _task() -> T:
            try:
                return fn()
            finally:
                with self._lock:
                    self._busy -= 1

        fut: Future[T] = self._pool.submit(_task)
        try:
            return fut.result(timeout=timeout_s)
        except FutureTimeout:
            if cleanup is not None:
                fut.add_done_callback(lambda f: cleanup(f.result()) if f.exception() is None else None)
            raise TimeoutError(f"{what} took longer than {timeout_s:g} s") from None


_SHARED: AdminWorkers | None = None
_SHARED_LOCK = threading.Lock()


def admin_workers() -> AdminWorkers:
    """The process-wide pool (created on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = AdminWorkers()
        return _SHARED
