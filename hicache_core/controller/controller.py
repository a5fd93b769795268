"""``StorageController``: attaches an L3 backend to a host pool and runs its workers.

See the package docstring for the contract. Internals in one paragraph: admin operations
hold one re-entrant lock and replace ``self._session`` atomically; request-path calls read
``self._session`` once and talk to that session only, so a swap never blocks them and never
makes them fail (a session that is stopping answers with misses). Backend calls run through
the session's ``GuardedBackend``; its reports feed the circuit breaker (``breaker``), which,
when it opens, detaches the session on a helper thread (a worker cannot join itself) and, with
``auto_reattach``, probes fresh instances of the same backend until one is healthy. Building a
session is ``builder``'s; ``status()`` and ``backend_view()`` are ``status_view``'s.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from prometheus_client import CollectorRegistry

from hicache_core.controller.breaker import BreakerMixin, BreakerState, now_iso
from hicache_core.controller.builder import SessionBuilderMixin
from hicache_core.controller.errors import ControllerError
from hicache_core.controller.faults import FaultInjectingStorage, parse_fault_config, strip_fault_key
from hicache_core.controller.metrics import ControllerMetrics
from hicache_core.controller.policies import (
    DEFAULT_PREFETCH_POLICY,
    DEFAULT_WRITE_POLICY,
    check_prefetch_policy,
    check_write_policy,
    split_extra_config,
    write_policy_allows,
)
from hicache_core.controller.prefetch import PrefetchOperation, PrefetchResult
from hicache_core.controller.session import AttachSpec, BackupJob, Session, _Once
from hicache_core.controller.status_view import StatusMixin
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import HiCacheError

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.plugins.registry import BackendRegistry
    from hicache_core.spec.storage import HiCacheStorage

log = logging.getLogger(__name__)

SWITCH_MODES: tuple[str, ...] = ("quiesce", "idle")

class StorageController(StatusMixin, SessionBuilderMixin, BreakerMixin):
    """Attaches one L3 backend at a time to ``host_pool`` and moves pages both ways.

    Admin operations (``attach``, ``detach``, ``close``) are thread-safe and raise
    ``ControllerError`` with the state rolled back. Request-path operations (``prefetch``,
    ``backup``, ``should_backup``) never raise: detached, degraded or failing == L3 misses.

    Beyond the contract's arguments: ``io_timeout_s`` bounds every backend call,
    ``quiesce_timeout_s`` bounds how long a switch waits for in-flight L3 work,
    ``attach_timeout_s`` bounds creating a backend, ``prefetch_policy`` / ``write_policy``
    are the policies in force before any attach says otherwise, and ``add_namespace_suffix``
    appends ``storage_config.namespace_suffix()`` to every page hash before it reaches the
    backend. Off by default: backends append the suffix themselves, as SGLang's do (every
    first-party plugin does), so keys stay byte-identical with SGLang's.
    ``prefetch_workers`` threads load prefetches of different requests in parallel (one
    request's batches stay in order on one thread).
    """

    def __init__(
        self,
        host_pool: HostKVPool,
        storage_config: HiCacheStorageConfig | None = None,
        registry: BackendRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        rank: int = 0,
        breaker_threshold: int = 5,
        auto_reattach: bool = True,
        probe_interval_s: float = 2.0,
        idle_check: Callable[[], str | None] | None = None,
        *,
        io_timeout_s: float = 10.0,
        quiesce_timeout_s: float = 5.0,
        attach_timeout_s: float = 60.0,
        prefetch_policy: str = DEFAULT_PREFETCH_POLICY,
        write_policy: str = DEFAULT_WRITE_POLICY,
        add_namespace_suffix: bool = False,
        prefetch_workers: int = 2,
    ) -> None:
        if breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be at least 1, got {breaker_threshold}")
        self.host_pool = host_pool
        self.storage_config = storage_config if storage_config is not None else HiCacheStorageConfig()
        self.registry = registry
        self.rank = rank
        self.auto_reattach = auto_reattach
        self.probe_interval_s = probe_interval_s
        self.idle_check = idle_check
        self.io_timeout_s = io_timeout_s
        self.quiesce_timeout_s = quiesce_timeout_s
        self.attach_timeout_s = attach_timeout_s
        if prefetch_workers < 1:
            raise ValueError(f"prefetch_workers must be at least 1, got {prefetch_workers}")
        self.prefetch_workers = prefetch_workers
        self.metrics = ControllerMetrics(metrics_registry, rank)
        self.metrics.stats_source(self.backend_stats)
        self._default_prefetch_policy = check_prefetch_policy(prefetch_policy)
        self._default_write_policy = check_write_policy(write_policy)
        self._prefetch_policy = self._default_prefetch_policy
        self._write_policy = self._default_write_policy
        self._suffix = self.storage_config.namespace_suffix() if add_namespace_suffix else ""
        self._admin = threading.RLock()
        self._session: Session | None = None
        self._spec: AttachSpec | None = None  # attached, or being probed while degraded
        self._state = "detached"
        self._generation = 0
        self._breaker = BreakerState(threshold=breaker_threshold)
        self._breaker_lock = threading.Lock()
        self._tripping = False
        self._probe_stop: threading.Event | None = None
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._closed = False
        self._reattached_at = float("-inf")
        #: Bumped whenever pages L2 believes are in L3 may be gone: every new session (attach,
        #: switch, breaker re-attach). A knobs-only re-attach keeps it.
        self._storage_epoch = 0
        self._shown_fields: frozenset[str] = frozenset()
        self._stats_cache: tuple[float, weakref.ref[Session] | None, dict[str, Any] | None] = (0.0, None, None)

    # ================================================================== properties
    @property
    def attached(self) -> bool:
        return self._session is not None

    @property
    def state(self) -> str:
        """``attached``, ``detached`` or ``degraded`` (detached by the breaker)."""
        return self._state

    @property
    def write_policy(self) -> str:
        return self._write_policy

    @property
    def storage_epoch(self) -> int:
        """Changes whenever L3's content may differ from what L2 recorded as stored."""
        return self._storage_epoch

    @property
    def prefetch_policy(self) -> str:
        return self._prefetch_policy

    @property
    def backend(self) -> HiCacheStorage | None:
        """The attached backend instance (wrapped when faults are injected), or None."""
        sess = self._session
        return sess.backend if sess is not None else None

    @property
    def fault_injector(self) -> FaultInjectingStorage | None:
        """The failure-injection wrapper of the attached backend, when one is configured."""
        sess = self._session
        return sess.fault_injector if sess is not None else None

    # ================================================================== admin
    def attach(
        self,
        backend: str,
        extra_config: dict[str, Any] | None = None,
        prefetch_policy: str | None = None,
        write_policy: str | None = None,
        replace: bool = False,
        switch_mode: str = "quiesce",
    ) -> str:
        """Attach ``backend`` (installed name or ``dynamic``); returns a message.

        Re-attaching the backend already attached with the same backend config only updates
        the policies and prefetch knobs. A different backend is refused unless ``replace``;
        then the new one is built first and the old one is quiesced and closed only once the
        new one is ready, so a failure anywhere leaves the old one attached and working.
        ``switch_mode="idle"`` refuses unless the engine is idle (``idle_check``), as SGLang.
        """
        with self._admin:
            if self._closed:
                raise ControllerError("Reject attach: the controller is closed")
            if switch_mode not in SWITCH_MODES:
                raise ControllerError(f"unknown switch_mode {switch_mode!r}; use one of {', '.join(SWITCH_MODES)}")
            if not isinstance(backend, str) or not backend:
                raise ControllerError("Reject attach: give the storage backend's name")
            spec = self._make_spec(backend, extra_config)
            current = self._session
            same = current is not None and current.spec.same_backend(spec)
            # A policy left out keeps the one in force for a knobs-only re-attach; a new
            # attach starts from the node's defaults (one attach's choice must not leak into
            # the next attach's).
            keep_prefetch = self._prefetch_policy if same else self._default_prefetch_policy
            keep_write = self._write_policy if same else self._default_write_policy
            new_prefetch = check_prefetch_policy(prefetch_policy) if prefetch_policy else keep_prefetch
            new_write = check_write_policy(write_policy) if write_policy else keep_write
            if current is not None and same:
                current.spec, current.knobs = spec, spec.knobs  # the session says what is in force
                self._spec = spec
                self._prefetch_policy, self._write_policy = new_prefetch, new_write
                return (
                    f"storage backend {backend!r} is already attached; updated prefetch_policy="
                    f"{new_prefetch}, write_policy={new_write}, prefetch knobs {spec.knobs.to_dict()}"
                )
            if current is not None and not replace:
                raise ControllerError(
                    f"Reject attach: storage backend {current.name!r} is already attached; detach it "
                    f"first or attach with replace=True to switch to {backend!r}"
                )
            if switch_mode == "idle":
                self._check_idle("attach")
            try:
                session = self._build_session(spec)
            except ControllerError as exc:
                self.metrics.attach(False)
                self._note_error(str(exc))
                raise
            try:
                session.start()
            except Exception as exc:  # starting threads failed: nothing else changed
                session.discard(self.quiesce_timeout_s)
                self.metrics.attach(False)
                msg = f"Reject attach: starting workers for {backend!r} failed: {type(exc).__name__}: {exc}"
                self._note_error(msg)
                raise ControllerError(msg) from exc
            self._prefetch_policy, self._write_policy = new_prefetch, new_write
            old = self._install(session, spec)
            self.metrics.attach(True)
            what = f"replaced {old.name!r} with" if old is not None else "attached"
            return (
                f"{what} storage backend {backend!r} (prefetch_policy={new_prefetch}, "
                f"write_policy={new_write})"
            )

    def detach(self, switch_mode: str = "quiesce") -> str:
        """Detach the backend (idempotent): quiesce the workers, close it. L3 data is kept."""
        with self._admin:
            if switch_mode not in SWITCH_MODES:
                raise ControllerError(f"unknown switch_mode {switch_mode!r}; use one of {', '.join(SWITCH_MODES)}")
            if switch_mode == "idle" and self._session is not None:
                self._check_idle("detach")
            self._stop_probing()
            old, was = self._session, self._state
            spec = self._spec
            self._session = None
            self._spec = None
            self._state = "detached"
            self._generation += 1
            self._reset_breaker()
            self._prefetch_policy, self._write_policy = self._default_prefetch_policy, self._default_write_policy
            self.metrics.set_attached(False)
            if old is not None:
                old.stop(self.quiesce_timeout_s)
                self.metrics.detach("admin")
                return f"detached storage backend {old.name!r}"
            if was == "degraded" and spec is not None:
                self.metrics.detach("admin")
                return f"detached storage backend {spec.backend!r} (it was degraded; probing stopped)"
            return "no storage backend is attached"

    def close(self) -> None:
        """Detach and stop every thread; the controller refuses attaches afterwards."""
        with self._admin:
            if self._closed:
                return
            self.detach()
            self._closed = True

    def __enter__(self) -> StorageController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== request path
    def prefetch(self, page_hashes: list[str], prefix_hashes: list[str] | None = None) -> PrefetchOperation | None:
        """Start loading the leading pages of ``page_hashes`` from L3; never raises.

        None when detached or when ``len(page_hashes) * page_size`` is below
        ``prefetch_threshold`` (the L3 lookup itself runs on the prefetch worker; when it
        finds fewer pages than the threshold the operation completes empty).
        """
        try:
            sess = self._session
            if sess is None or not page_hashes:
                return None
            ps = self.host_pool.page_size
            tokens = len(page_hashes) * ps
            if tokens < sess.knobs.prefetch_threshold:
                return None
            op = PrefetchOperation(
                list(page_hashes), list(prefix_hashes or []), ps, self._prefetch_policy,
                sess.knobs.timeout_for(tokens), free=self.host_pool.free,
                on_taken=lambda res: self.metrics.hit(res.pages * ps),
            )
            if not sess.submit_prefetch(op):
                return None
            self.metrics.prefetch_started()
            return op
        except Exception:
            log.exception("prefetch() failed; answering with a miss")
            return None

    def backup(
        self,
        page_hashes: list[str],
        host_indices: torch.Tensor,
        on_done: Callable[[list[bool]], object] | None = None,
    ) -> bool:
        """Queue an L2 -> L3 write of ``page_hashes`` from ``host_indices``; never raises.

        ``on_done(results)`` runs exactly once, one bool per page (True = stored). Returns
        False when nothing was queued; ``on_done`` has then already run, with False entries.
        On an MLA non-writer rank nothing is written and every entry is True (rank 0 writes).
        """
        done = _Once(on_done)
        n = len(page_hashes)
        try:
            sess = self._session
            if sess is None:
                done([False] * n)
                return False
            idx = torch.as_tensor(host_indices, dtype=torch.int64)
            if idx.numel() != n * self.host_pool.page_size:
                log.error(
                    "backup(): %d pages need %d host indices, got %d; not queued",
                    n, n * self.host_pool.page_size, idx.numel(),
                )
                done([False] * n)
                return False
            try:  # a caller's bad indices must not count as backend failures (the breaker)
                self.host_pool.indices_to_pages(idx)
            except ValueError as exc:
                log.error("backup(): %s; not queued", exc)
                done([False] * n)
                return False
            if n == 0:
                done([])
                return True
            if not sess.is_writer:
                done([True] * n)
                return True
            job = BackupJob(list(page_hashes), sess.keys(list(page_hashes)), idx, done)
            if not sess.submit_backup(job):
                done([False] * n)
                return False
            self.metrics.backup_started()
            return True
        except Exception:
            log.exception("backup() failed; reporting every page as not stored")
            done([False] * n)
            return False

    def should_backup(self, event: str, hit_count: int = 1) -> bool:
        """The write policy as a decision for ``event`` (insert, hit, evict); never raises."""
        if self._session is None:
            return False
        try:
            return write_policy_allows(self._write_policy, event, hit_count)
        except ValueError:
            log.error("should_backup(): unknown event %r; use insert, hit or evict", event)
            return False

    # ================================================================== internals
    def _make_spec(self, backend: str, extra_config: dict[str, Any] | None) -> AttachSpec:
        if extra_config is not None and not isinstance(extra_config, dict):
            raise ControllerError(f"Reject attach: extra_config must be a JSON object, got {type(extra_config).__name__}")
        given = dict(extra_config or {})
        knobs, rest = split_extra_config(given)
        try:
            faults = parse_fault_config(rest)
        except HiCacheError as exc:
            raise ControllerError(f"Reject attach: {exc}") from exc
        return AttachSpec(backend, given, strip_fault_key(rest), knobs, faults)

    def _check_idle(self, op: str) -> None:
        why = self.idle_check() if self.idle_check is not None else None
        if why:
            raise ControllerError(why if why.startswith("Reject") else f"Reject {op}: {why}")
        sess = self._session
        if sess is not None:
            prefetches, backups = sess.pending()
            if prefetches or backups:
                raise ControllerError(
                    f"Reject {op}: storage workers are not idle. #prefetch={prefetches} #backup={backups}"
                )

    def _install(self, session: Session, spec: AttachSpec, reattach: bool = False) -> Session | None:
        """Swap in a started session (admin lock held); quiesce and close the old one."""
        self._stop_probing()
        old = self._session
        if old is not None:
            old.stop(self.quiesce_timeout_s)  # request-path calls now see misses
            self.metrics.detach("replace")
        self._session = session
        self._spec = spec
        self._state = "attached"
        self._generation += 1
        self._storage_epoch += 1  # a new instance: what L2 recorded as stored may be gone
        if reattach:
            self._reattached_at = time.monotonic()
        self._reset_breaker()
        session.open()
        self.metrics.set_attached(True)
        return old

    def _note_error(self, message: str) -> None:
        self._last_error = message
        self._last_error_at = now_iso()

    def __repr__(self) -> str:
        spec = self._spec
        return f"StorageController(rank={self.rank}, state={self._state}, backend={spec.backend if spec else None})"


__all__ = ["BreakerState", "PrefetchResult", "StorageController"]
