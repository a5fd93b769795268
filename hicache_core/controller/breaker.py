"""The circuit breaker of a controller: trip on failing calls, probe, re-attach without flapping.

Only calls that *fail* count: raising, timing out, answering with the wrong shape. A backend
that answers "no" (all pages False: a full store, refused writes) is handled by back-pressure
in the session, never by a detach, as long as its ``health_check`` passes; a backend that
refuses everything *and* fails its health check (a store whose server is down) is reported
``unhealthy`` and opens the breaker at once.

After a trip the controller probes fresh instances of the backend on the shared admin pool
(one probe at a time; a probe that hangs is waited for, never doubled). A backend that
trips again soon after being re-attached waits longer before the next probe: the interval
doubles per quick re-trip up to ``PROBE_BACKOFF_MAX_S``, so a flaky store cannot flap the
node between attached and detached several times a second.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hicache_core.controller.errors import ControllerError
from hicache_core.controller.workers import admin_workers

if TYPE_CHECKING:
    from hicache_core.controller.metrics import ControllerMetrics
    from hicache_core.controller.session import AttachSpec, Session

log = logging.getLogger(__name__)

#: A re-trip within this many seconds of a re-attach counts as flapping.
FLAP_WINDOW_S = 30.0
#: The longest wait between two probes.
PROBE_BACKOFF_MAX_S = 60.0


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class BreakerState:
    """The circuit breaker of one controller."""

    threshold: int
    state: str = "closed"  # "closed" (calls flow) or "open" (backend detached by the breaker)
    consecutive_failures: int = 0
    trips: int = 0
    opened_at: str | None = None
    reason: str | None = None
    last_probe_at: str | None = None
    last_probe_error: str | None = None
    probes: int = 0
    #: Seconds until the next probe (doubles on each quick re-trip).
    probe_wait_s: float = 0.0
    quick_retrips: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BreakerMixin:
    """The breaker half of ``StorageController`` (it supplies the attributes declared here)."""

    rank: int
    auto_reattach: bool
    probe_interval_s: float
    quiesce_timeout_s: float
    attach_timeout_s: float
    metrics: ControllerMetrics
    _admin: threading.RLock
    _session: Session | None
    _spec: AttachSpec | None
    _state: str
    _generation: int
    _breaker: BreakerState
    _breaker_lock: threading.Lock
    _tripping: bool
    _probe_stop: threading.Event | None
    _reattached_at: float

    if TYPE_CHECKING:  # provided by StorageController
        def _note_error(self, message: str) -> None: ...
        def _build_session(self, spec: AttachSpec) -> Session: ...
        def _install(self, session: Session, spec: AttachSpec, reattach: bool = False) -> Session | None: ...

    # ---------------------------------------------------------------- state
    def _reset_breaker(self) -> None:
        with self._breaker_lock:
            was_open = self._breaker.state == "open"
            old = self._breaker
            self._breaker = BreakerState(threshold=old.threshold, trips=old.trips, quick_retrips=old.quick_retrips,
                                         probe_wait_s=old.probe_wait_s)
            self._tripping = False
        if was_open:
            self.metrics.breaker("closed")

    def _on_report(self, session: Session, op: str, kind: str | None, detail: str) -> None:
        if session is not self._session or kind == "shutdown":
            return  # a stopping session's calls say nothing about the attached backend
        if kind is None:
            with self._breaker_lock:
                self._breaker.consecutive_failures = 0
            return
        self.metrics.failure(op, kind)
        self._note_error(f"{session.name}: {detail}")
        with self._breaker_lock:
            self._breaker.consecutive_failures += 1
            if kind == "unhealthy":  # the backend itself says it is failing: no need to count on
                self._breaker.consecutive_failures = max(self._breaker.consecutive_failures, self._breaker.threshold)
            trip = self._breaker.consecutive_failures >= self._breaker.threshold and not self._tripping
            if trip:
                self._tripping = True
                count = self._breaker.consecutive_failures
        if trip:
            reason = f"{count} consecutive failed calls to {session.name!r}; last: {detail}"
            # Not on this thread: it is one of the session's own workers, which the detach joins.
            threading.Thread(
                target=self._trip, args=(session, reason), name=f"hicache-breaker-r{self.rank}", daemon=True
            ).start()

    def _trip(self, session: Session, reason: str) -> None:
        with self._admin:
            if self._session is not session:
                return
            self._session = None  # from here on the request path sees misses
            self._state = "degraded"
            self._generation += 1
            quick = time.monotonic() - self._reattached_at < FLAP_WINDOW_S
            with self._breaker_lock:
                b = self._breaker
                b.state = "open"
                b.trips += 1
                b.opened_at = now_iso()
                b.reason = reason
                b.quick_retrips = b.quick_retrips + 1 if quick else 0
                b.probe_wait_s = min(PROBE_BACKOFF_MAX_S, self.probe_interval_s * (2 ** b.quick_retrips))
                wait = b.probe_wait_s
            self.metrics.set_attached(False)
            self.metrics.breaker("open")
            log.warning("rank %d: circuit breaker open, detaching %r (next probe in %.1f s): %s",
                        self.rank, session.name, wait, reason)
            session.stop(self.quiesce_timeout_s)
            self.metrics.detach("breaker")
            self._note_error(f"circuit breaker opened: {reason}")
            if self.auto_reattach and self._spec is not None:
                self._start_probing(self._generation, self._spec, wait)

    # ---------------------------------------------------------------- probing
    def _start_probing(self, generation: int, spec: AttachSpec, first_wait_s: float | None = None) -> None:
        stop = threading.Event()
        self._probe_stop = stop
        threading.Thread(
            target=self._probe_loop, args=(generation, spec, stop, first_wait_s),
            name=f"hicache-probe-r{self.rank}", daemon=True,
        ).start()

    def _stop_probing(self) -> None:
        if self._probe_stop is not None:
            self._probe_stop.set()
            self._probe_stop = None

    def _probe_once(self, spec: AttachSpec) -> tuple[Session | None, str | None]:
        """Build a fresh session and health-check it; (session, None) when it is healthy."""
        try:
            session = self._build_session(spec)
        except ControllerError as exc:
            return None, str(exc)
        try:
            out = admin_workers().run(
                f"health check of {spec.backend!r}", session.health_check, self.attach_timeout_s
            )
        except Exception as exc:
            session.discard(self.quiesce_timeout_s)
            return None, f"health_check: {type(exc).__name__}: {exc}"
        if not out.ok:
            session.discard(self.quiesce_timeout_s)
            return None, f"health_check failed: {out.detail}"
        return session, None

    def _probe_loop(self, generation: int, spec: AttachSpec, stop: threading.Event,
                    first_wait_s: float | None = None) -> None:
        """Probe after the backoff wait, then every ``probe_interval_s``; re-attach when healthy."""
        wait = self.probe_interval_s if first_wait_s is None else first_wait_s
        while not stop.wait(wait):
            wait = self.probe_interval_s
            if self._generation != generation:
                return
            session, error = self._probe_once(spec)
            with self._breaker_lock:
                self._breaker.probes += 1
                self._breaker.last_probe_at = now_iso()
                self._breaker.last_probe_error = error
            if session is None:
                continue
            with self._admin:
                if self._generation != generation or stop.is_set() or self._state != "degraded":
                    session.discard(self.quiesce_timeout_s)
                    return
                try:
                    session.start()
                except Exception as exc:
                    session.discard(self.quiesce_timeout_s)
                    with self._breaker_lock:
                        self._breaker.last_probe_error = f"starting workers failed: {exc}"
                    continue
                self._install(session, spec, reattach=True)
                self.metrics.attach(True, reattach=True)
                log.warning("rank %d: backend %r is healthy again; re-attached", self.rank, spec.backend)
                return
