"""One NIXL transfer, posted, polled to completion within a deadline, and always released.

Failures and timeouts come back as an ``Outcome``, never as an exception: callers turn them
into per-page results. A handle NIXL refuses to release (a transfer it could not cancel) is
kept and released later, and counted.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Poll without sleeping this long before backing off: the POSIX plugin submits at most 64
#: I/Os per poll, so any pause multiplies latency by the number of polls a batch needs, and
#: even ``sleep(0)`` gives the CPU away for a whole time slice on a busy machine. Python's
#: switch interval still hands the GIL to the engine's other threads while we spin.
_SPIN_S = 0.005
_MAX_SLEEP_S = 0.001


class Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"


class Transfers:
    """Runs READ/WRITE requests between registered DRAM and the chosen plugin's segment."""

    def __init__(self, agent: Any, backend: str, segment: str, timeout_s: float) -> None:
        self.agent = agent
        self.backend = backend
        self.segment = segment
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._unreleased: list[Any] = []
        self.unreleased_total = 0
        self.errors = 0
        self.timeouts = 0

    def run(self, op: str, local: np.ndarray, remote: np.ndarray) -> Outcome:
        """Move ``local`` (DRAM rows) to or from ``remote`` (segment rows); ``op`` is READ or WRITE.

        Rows are Nx3 uint64 arrays (address or offset, length, device id), the cheapest input
        NIXL's descriptor lists take."""
        self._retry_releases()
        handle = None
        try:
            handle = self.agent.initialize_xfer(
                op, self.agent.get_xfer_descs(local, "DRAM"), self.agent.get_xfer_descs(remote, self.segment),
                self.agent.name, backends=[self.backend],
            )
            state = self.agent.transfer(handle)
            start = time.monotonic()
            deadline = start + self.timeout_s
            pause = 0.0
            while state == "PROC":
                now = time.monotonic()
                if now > deadline:
                    self._count("timeouts")
                    log.warning("nixl: %s of %d descriptors timed out after %.3f s", op, len(remote), self.timeout_s)
                    return Outcome.TIMEOUT
                if now - start > _SPIN_S:
                    pause = min(_MAX_SLEEP_S, pause * 2 or 0.00005)
                    time.sleep(pause)
                state = self.agent.check_xfer_state(handle)
            if state == "DONE":
                return Outcome.DONE
            self._count("errors")
            log.warning("nixl: %s of %d descriptors ended in state %s", op, len(remote), state)
            return Outcome.FAILED
        except Exception as exc:  # NIXL reports backend errors as exceptions
            self._count("errors")
            log.warning("nixl: %s of %d descriptors failed: %s: %s", op, len(remote), type(exc).__name__, exc)
            return Outcome.FAILED
        finally:
            if handle is not None:
                self._release(handle)

    def _release(self, handle: Any, first: bool = True) -> None:
        try:
            handle.release()
        except Exception as exc:
            log.warning("nixl: transfer handle not released yet (%s); will retry", exc)
            with self._lock:
                self._unreleased.append(handle)
                self.unreleased_total += int(first)

    def _retry_releases(self) -> None:
        if not self._unreleased:
            return
        with self._lock:
            pending, self._unreleased = self._unreleased, []
        for handle in pending:
            self._release(handle, first=False)

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    @property
    def pending_releases(self) -> int:
        return len(self._unreleased)

    def close(self) -> None:
        self._retry_releases()
