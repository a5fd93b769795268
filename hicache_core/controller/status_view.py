"""The status half of ``StorageController``: ``status()``, ``backend_view()``, backend counters.

Lock-free with respect to admin operations (they answer at once even while an attach is
building a slow backend). Config values are shown through ``shown_config`` (an allow-list)
and error texts lose URL userinfo: nothing here may carry a secret out of the process.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hicache_core.controller.shown_config import shown_config, strip_userinfo

if TYPE_CHECKING:
    from hicache_core.controller.breaker import BreakerState
    from hicache_core.controller.metrics import ControllerMetrics
    from hicache_core.controller.session import AttachSpec, Session

#: Seconds a ``get_stats()`` answer is reused (status and /metrics read it often).
STATS_TTL_S = 1.0


class StatusMixin:
    """Mixin of ``StorageController``; it supplies the attributes declared here."""

    rank: int
    auto_reattach: bool
    probe_interval_s: float
    io_timeout_s: float
    metrics: ControllerMetrics
    _session: Session | None
    _spec: AttachSpec | None
    _state: str
    _breaker: BreakerState
    _breaker_lock: threading.Lock
    _prefetch_policy: str
    _write_policy: str
    _suffix: str
    _storage_epoch: int
    _shown_fields: frozenset[str]
    _stats_cache: tuple[float, weakref.ref[Session] | None, dict[str, Any] | None]
    _last_error: str | None
    _last_error_at: str | None

    def status(self) -> dict[str, Any]:
        """JSON-serialisable state: backend, config, policies, breaker, counters, last error.

        Lock-free with respect to admin operations: it answers at once even while an attach
        is building a slow backend (it then shows the state before that attach).
        """
        sess, spec, state = self._session, self._spec, self._state
        with self._breaker_lock:
            breaker = self._breaker.to_dict()
        pending = sess.pending() if sess is not None else (0, 0)
        faults = sess.fault_injector if sess is not None else None
        return {
            "rank": self.rank,
            "state": state,
            "backend": spec.backend if spec is not None else None,
            "extra_config": shown_config(spec.extra_config, self._shown_fields) if spec is not None else None,
            "prefetch_policy": self._prefetch_policy,
            "write_policy": self._write_policy,
            "policies": {
                "prefetch": self._prefetch_policy,
                "write": self._write_policy,
                **(spec.knobs.to_dict() if spec is not None else {}),
            },
            "attached_at": (
                datetime.fromtimestamp(sess.attached_at, timezone.utc).isoformat(timespec="seconds")
                if sess is not None else None
            ),
            "breaker": {**breaker, "auto_reattach": self.auto_reattach, "probe_interval_s": self.probe_interval_s},
            "counters": self.metrics.snapshot(),
            "backend_stats": self.backend_stats_shown(),
            "storage_epoch": self._storage_epoch,
            "queues": {"prefetch": pending[0], "backup": pending[1],
                       "backup_backing_off": sess.backing_off if sess is not None else False},
            "fault_injection": (
                {**faults.faults.to_dict(), "fail_all": faults.switch.fail_all, **faults.injected}
                if faults is not None else None
            ),
            "io_timeout_s": self.io_timeout_s,
            "namespace_suffix": self._suffix,
            "last_error": strip_userinfo(self._last_error) if self._last_error else None,
            "last_error_at": self._last_error_at,
        }

    def backend_view(self) -> dict[str, Any]:
        """SGLang's ``GET /hicache/storage-backend`` fields, as now in force (lock-free)."""
        sess = self._session
        spec = sess.spec if sess is not None else None
        extra = self._spec.extra_config if sess is not None and self._spec is not None else None
        return {
            "hicache_storage_backend": spec.backend if spec is not None else None,
            "hicache_storage_backend_extra_config_json": (
                json.dumps(shown_config(extra, self._shown_fields)) if extra else None
            ),
            "hicache_storage_prefetch_policy": self._prefetch_policy,
            "hicache_write_policy": self._write_policy,
        }

    def backend_stats(self) -> tuple[str, dict[str, Any]] | None:
        """(backend name, its ``get_stats()``), read at most once per ``STATS_TTL_S``; None when none."""
        sess = self._session
        if sess is None:
            return None
        at, cached_sess, cached = self._stats_cache
        if cached_sess is not None and cached_sess() is sess and time.monotonic() - at < STATS_TTL_S:
            return (sess.name, cached) if cached is not None else None
        out = sess.guard.call("get_stats", sess.backend.get_stats, report=False)
        stats = out.value if out.ok and isinstance(out.value, dict) else None
        # A weak reference: a detached session (its closed backend) must not live on in a cache.
        self._stats_cache = (time.monotonic(), weakref.ref(sess), stats)
        return (sess.name, stats) if stats is not None else None

    def backend_stats_shown(self) -> dict[str, Any] | None:
        """The backend's ``get_stats()`` for status: numbers and flags; strings only if public."""
        got = self.backend_stats()
        if got is None:
            return None
        _, stats = got
        out: dict[str, Any] = {}
        for k, v in stats.items():
            if isinstance(v, (bool, int, float)) or v is None:
                out[str(k)] = v
            elif isinstance(v, dict):
                out[str(k)] = {str(a): b for a, b in v.items() if isinstance(b, (bool, int, float))}
            elif isinstance(v, str) and str(k) == "path":
                out[str(k)] = strip_userinfo(v)
        return out

