"""The backend behind the connector, guarded: any failure is a miss, never an exception.

The backend is built by hicache's one factory (``create_backend``), by name exactly as
``hicache backends`` lists it, with its extra-config, and registered with the staging pool (so
its key namespace is the staging pool's format). A ``fault_injection`` object in the config
wraps it in hicache's failure-injection wrapper, as the reference node does.

A backend name that is not installed, or a config the backend refuses, is the operator's to
fix: the connector raises at start-up, saying what to do. Failures: a backend that cannot start, raises, or answers wrongly gives no hits, loads
nothing and stores nothing for that call. After ``BREAK_AFTER`` consecutive failed calls the
store stops calling the backend for ``RETRY_S`` seconds (detached), then tries again, so a
dead L3 costs each request nothing but a flag check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from hicache_core.controller.faults import FaultInjectingStorage, parse_fault_config, strip_fault_key
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.plugins.factory import create_backend
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError, BackendNotFoundError, ContractVersionError
from hicache_core.spec.storage import HiCacheStorage
from hicache_vllm.settings import ConnectorConfigError

log = logging.getLogger(__name__)

BREAK_AFTER = 3
RETRY_S = 10.0

T = TypeVar("T")


class GuardedStore:
    """One backend instance for one role of one rank, behind a failure guard."""

    def __init__(self, backend: str, config: HiCacheStorageConfig, pool: HostKVPool,
                 factory: Callable[..., HiCacheStorage] = create_backend) -> None:
        self.backend_name = backend
        self.config = config
        self.pool = pool
        self._factory = factory
        self._backend: HiCacheStorage | None = None
        self._lock = threading.Lock()
        self._failures = 0
        self._detached_until = 0.0
        self.last_error: str | None = None
        self.counters: dict[str, int] = {
            "lookups": 0, "lookup_hit_pages": 0, "load_pages": 0, "load_failed_pages": 0,
            "save_pages": 0, "save_failed_pages": 0, "errors": 0,
            # Wall time spent in the backend's calls, microseconds (lookups, loads, saves).
            "lookup_us": 0, "load_us": 0, "save_us": 0,
        }
        self._connect(first=True)

    # ------------------------------------------------------------------ lifecycle
    def _connect(self, first: bool = False) -> None:
        """Build the backend. At start-up a name that is not installed or a bad config raises
        (the operator must fix it); a backend that fails to start leaves L3 detached."""
        extra = self.config.extra()
        try:
            faults = parse_fault_config(extra)
            cfg = replace(self.config, extra_config=strip_fault_key(extra))
            backend = self._factory(self.backend_name, cfg, mem_pool_host=self.pool)
            if faults is not None:
                backend = FaultInjectingStorage(backend, faults)
            self._backend = backend
            self._failures = 0
            log.info("hicache-vllm: backend %r attached, namespace %s", self.backend_name, self.namespace)
        except (BackendNotFoundError, BackendConfigError, ContractVersionError) as exc:
            if first:
                raise ConnectorConfigError(f"HiCacheConnector: {exc}") from exc
            self._note_failure(f"backend {self.backend_name!r} refused its config: {exc}")
        except Exception as exc:  # a backend that cannot start: run without L3
            self._note_failure(f"backend {self.backend_name!r} failed to start: {type(exc).__name__}: {exc}")

    @property
    def namespace(self) -> str | None:
        return self._backend.namespace if self._backend is not None else None

    @property
    def attached(self) -> bool:
        return self._backend is not None and time.monotonic() >= self._detached_until

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                backend.close()
            except Exception:
                log.debug("hicache-vllm: closing the backend raised", exc_info=True)

    # ------------------------------------------------------------------ guard
    def _note_failure(self, why: str) -> None:
        with self._lock:
            self.counters["errors"] += 1
            self._failures += 1
            self.last_error = why
            if self._failures >= BREAK_AFTER:
                self._detached_until = time.monotonic() + RETRY_S
        log.warning("hicache-vllm: %s (a miss; the request goes on)", why)

    def _call(self, op: str, fn: Callable[[HiCacheStorage], T], fallback: T) -> T:
        if self._backend is None:
            if time.monotonic() < self._detached_until:
                return fallback
            self._connect()
            if self._backend is None:
                return fallback
        if time.monotonic() < self._detached_until:
            return fallback
        try:
            result = fn(self._backend)
        except Exception as exc:
            self._note_failure(f"{op} failed: {type(exc).__name__}: {exc}")
            return fallback
        with self._lock:
            self._failures = 0
        return result

    # ------------------------------------------------------------------ I/O
    def leading_hits(self, hashes: Sequence[str]) -> int:
        """How many of ``hashes``, from the first, are stored (0 on any failure)."""
        if not hashes:
            return 0
        self.counters["lookups"] += 1
        t0 = time.perf_counter()
        n = self._call("batch_exists", lambda b: b.batch_exists(list(hashes)), 0)
        self.counters["lookup_us"] += int((time.perf_counter() - t0) * 1e6)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(hashes):
            self._note_failure(f"batch_exists answered {n!r} for {len(hashes)} keys")
            return 0
        self.counters["lookup_hit_pages"] += n
        return n

    def _indices(self, pages: Sequence[int]) -> Any:
        return self.pool.pages_to_indices(list(pages))

    def load(self, hashes: Sequence[str], pages: Sequence[int]) -> list[bool]:
        """Read each page into staging page ``pages[i]``; one bool per page (False on failure)."""
        if not hashes:
            return []
        t0 = time.perf_counter()
        res = self._call("batch_get_v1", lambda b: b.batch_get_v1(list(hashes), self._indices(pages)), None)
        self.counters["load_us"] += int((time.perf_counter() - t0) * 1e6)
        ok = _per_page(res, len(hashes))
        if res is not None and ok is None:
            self._note_failure(f"batch_get_v1 answered {res!r} for {len(hashes)} pages")
        ok = ok or [False] * len(hashes)
        self.counters["load_pages"] += sum(ok)
        self.counters["load_failed_pages"] += len(ok) - sum(ok)
        return ok

    def save(self, hashes: Sequence[str], pages: Sequence[int]) -> list[bool]:
        """Store staging page ``pages[i]`` under ``hashes[i]``; one bool per page."""
        if not hashes:
            return []
        t0 = time.perf_counter()
        res = self._call("batch_set_v1", lambda b: b.batch_set_v1(list(hashes), self._indices(pages)), None)
        self.counters["save_us"] += int((time.perf_counter() - t0) * 1e6)
        ok = _per_page(res, len(hashes)) or [False] * len(hashes)
        self.counters["save_pages"] += sum(ok)
        self.counters["save_failed_pages"] += len(ok) - sum(ok)
        return ok


def _per_page(result: Any, n: int) -> list[bool] | None:
    """A v1 answer as one bool per page, or None when it is not one."""
    if result is None:
        return None
    try:
        out = [bool(x) for x in result]
    except TypeError:
        return None
    return out if len(out) == n else None
