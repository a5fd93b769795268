"""One attached backend at work: its prefetch and backup worker threads and their queues.

A session is built (backend created, wrapped, host pool registered), started (threads
running, not yet accepting), opened (accepting requests) and finally stopped (quiesced:
queued work answered with misses, in-flight work finished within a bound, backend closed).
The controller swaps sessions; a session never outlives one attachment.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.controller.faults import FaultInjectingStorage
from hicache_core.controller.guard import CallOutcome, GuardedBackend, check_bool_list, check_count
from hicache_core.controller.metrics import ControllerMetrics
from hicache_core.controller.prefetch import PrefetchOperation
from hicache_core.controller.session_types import AttachSpec, BackupJob, _Once
from hicache_core.spec.config import HiCacheStorageExtraInfo
from hicache_core.spec.storage import HiCacheStorage

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

__all__ = ["AttachSpec", "BackupJob", "Session", "SessionReport", "_Once"]

#: SGLang issues L3 I/O in batches of at most this many pages.
BATCH_PAGES = 128

#: Bounds of the work queues. A full queue never blocks a request: the prefetch is a miss
#: and the backup reports its pages as not stored (L2 keeps them), i.e. L2-only for a moment.
PREFETCH_QUEUE_MAX = 256
BACKUP_QUEUE_MAX = 512

#: Back-pressure on a store that refuses every page of a batch (full, or refusing): backups
#: are answered "not stored" without calling it for this long, doubling up to the maximum
#: while it keeps refusing. A refusal is not a failure: it never opens the breaker.
REFUSED_BACKOFF_S = 0.25
REFUSED_BACKOFF_MAX_S = 8.0
#: A page call that raised is tried again this many times at once (a transient error costs
#: a hit or a backup otherwise); timeouts and bad answers are never retried.
READ_WRITE_RETRIES = 1
#: Pause before asking a refusing store's health a second time.
HEALTH_RECHECK_S = 0.1

#: ``report(session, op, kind, detail)``: kind None = success.
SessionReport = Callable[["Session", str, "str | None", str], None]


class Session:
    """See the module docstring."""

    def __init__(
        self,
        spec: AttachSpec,
        backend: HiCacheStorage,
        pool: HostKVPool,
        *,
        rank: int,
        key_suffix: str,
        is_writer: bool,
        io_timeout_s: float,
        metrics: ControllerMetrics,
        report: SessionReport,
        prefetch_workers: int = 1,
    ) -> None:
        self.spec = spec
        self.knobs = spec.knobs
        self.backend = backend
        self.pool = pool
        self.rank = rank
        self.key_suffix = key_suffix
        self.is_writer = is_writer
        self.metrics = metrics
        self.attached_at = time.time()
        self._report = report
        self.prefetch_workers = max(1, prefetch_workers)
        # Room for every worker's call plus a health probe, and for a couple of hung calls.
        self.guard = GuardedBackend(
            io_timeout_s, self._report_call, thread_name=f"hicache-io-r{rank}", workers=self.prefetch_workers + 3
        )
        self._lock = threading.Lock()
        self._accepting = False
        self._stopping = threading.Event()
        self._pq: queue.Queue[PrefetchOperation | None] = queue.Queue(maxsize=PREFETCH_QUEUE_MAX)
        self._bq: queue.Queue[BackupJob | None] = queue.Queue(maxsize=BACKUP_QUEUE_MAX)
        self._refused_until = 0.0  # monotonic time until which backups are not sent (back-pressure)
        self._refused_backoff = 0.0
        self._current_ops: set[PrefetchOperation] = set()
        self._busy_backup = False
        self._threads: list[threading.Thread] = []

    @property
    def name(self) -> str:
        return self.spec.backend

    @property
    def fault_injector(self) -> FaultInjectingStorage | None:
        return self.backend if isinstance(self.backend, FaultInjectingStorage) else None

    def _report_call(self, op: str, kind: str | None, detail: str) -> None:
        self._report(self, op, kind, detail)

    def keys(self, hashes: list[str]) -> list[str]:
        return [h + self.key_suffix for h in hashes]

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker threads (they wait for work; nothing is accepted yet)."""
        workers = [("prefetch", self._prefetch_loop)] * self.prefetch_workers + [("backup", self._backup_loop)]
        for i, (name, target) in enumerate(workers):
            t = threading.Thread(target=target, name=f"hicache-{name}{i}-r{self.rank}-{self.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def open(self) -> None:
        with self._lock:
            self._accepting = True

    def pending(self) -> tuple[int, int]:
        """(prefetches, backups) queued or in flight."""
        with self._lock:
            return (
                self._pq.qsize() + len(self._current_ops),
                self._bq.qsize() + (1 if self._busy_backup else 0),
            )

    def stop(self, bound_s: float) -> None:
        """Quiesce and close: see the module docstring. Returns within about ``bound_s`` x 2."""
        with self._lock:
            self._accepting = False
            self._stopping.set()
            current = list(self._current_ops)
        for op in current:
            op.finish("backend detached")
        for op in _drain(self._pq):
            op.finish("backend detached")
        for job in _drain(self._bq):
            job.on_done([False] * len(job.keys))
        for _ in range(self.prefetch_workers):
            _put_sentinel(self._pq)
        _put_sentinel(self._bq)
        deadline = time.monotonic() + bound_s
        for t in self._threads:
            if t is threading.current_thread():
                continue  # an admin call made from this session's own callback
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not stop within %.1f s; leaving it to finish on its own", t.name, bound_s)
        self.guard.shutdown()
        # Never close a backend under a running call (Mooncake: unregister/close during
        # batch_get_into). Wait for them within the bound; if one still runs, the close
        # happens when it returns.
        if not self.guard.wait_idle(max(0.0, deadline - time.monotonic())):
            log.warning("backend %r still has %d call(s) running; it will be closed when they return",
                        self.name, self.guard.running)
        self.guard.when_idle(lambda: self.close_backend(bound_s))

    def close_backend(self, bound_s: float) -> None:
        """Close the backend on an admin worker, waiting at most ``bound_s``."""
        from hicache_core.controller.workers import admin_workers

        try:
            admin_workers().run(f"closing backend {self.name!r}", self.backend.close, bound_s)
        except TimeoutError:
            log.warning("closing backend %r takes longer than %.1f s; not waiting", self.name, bound_s)
        except RuntimeError as exc:  # every admin worker is held: close here
            log.warning("%s; closing backend %r on this thread", exc, self.name)
            _close_quietly(self.backend, self.name)
        except Exception:
            log.warning("closing backend %r raised", self.name, exc_info=True)

    @property
    def closed_after_calls(self) -> bool:
        """True when no backend call is running (the backend is, or may be, closed)."""
        return self.guard.running == 0

    def discard(self, bound_s: float) -> None:
        """Throw away a session that was built but never opened."""
        self.stop(bound_s)

    # -------------------------------------------------------------- request side
    def submit_prefetch(self, op: PrefetchOperation) -> bool:
        """Queue ``op``; False (a miss) when not accepting or the queue is full. Never blocks."""
        with self._lock:
            if not self._accepting:
                return False
            try:
                self._pq.put_nowait(op)
            except queue.Full:
                self.metrics.overflow("prefetch")
                return False
            return True

    def submit_backup(self, job: BackupJob) -> bool:
        """Queue ``job``; False (pages stay in L2 only) when not accepting, full or backing off."""
        with self._lock:
            if not self._accepting:
                return False
            if time.monotonic() < self._refused_until:
                self.metrics.refused(len(job.keys))
                return False
            try:
                self._bq.put_nowait(job)
            except queue.Full:
                self.metrics.overflow("backup")
                return False
            return True

    def _note_refusal(self, refused_all: bool) -> None:
        """Back-pressure: a batch refused whole backs off further; any stored page resets it.

        A refused batch alone cannot tell a full store from a dead one (a backend whose
        server is down may answer False for every page instead of raising), so each back-off
        step asks the backend's ``health_check``: healthy means full or refusing (back-pressure
        only); unhealthy is reported as a failure of kind ``unhealthy``, which opens the breaker.
        """
        with self._lock:
            if not refused_all:
                self._refused_backoff = 0.0
                self._refused_until = 0.0
                return
            self._refused_backoff = min(REFUSED_BACKOFF_MAX_S, max(REFUSED_BACKOFF_S, self._refused_backoff * 2))
            self._refused_until = time.monotonic() + self._refused_backoff
        out = self.guard.call("health_check", self.backend.health_check, report=False)
        if not out.ok and out.kind != "shutdown" and not self._stopping.wait(HEALTH_RECHECK_S):
            # Asked twice: one failed check (a blip) must not detach a store that is only full.
            out = self.guard.call("health_check", self.backend.health_check, report=False)
            if not out.ok and out.kind != "shutdown":
                self._report(self, "health_check", "unhealthy", f"refused every page, and {out.detail}")

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self._refused_until

    def health_check(self) -> CallOutcome:
        return self.guard.call("health_check", self.backend.health_check, report=False)

    # -------------------------------------------------------------- prefetch worker
    def _prefetch_loop(self) -> None:
        while True:
            op = self._pq.get()
            if op is None:
                return
            with self._lock:
                if self._stopping.is_set():
                    op.finish("backend detached")
                    continue
                self._current_ops.add(op)
            t0 = time.perf_counter()
            try:
                op.finish(self._run_prefetch(op))
                self.metrics.prefetch_finished(time.perf_counter() - t0, op.loaded_pages)
            except Exception as exc:  # a bug here must not kill the worker
                log.exception("prefetch failed")
                op.finish(f"prefetch failed: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._current_ops.discard(op)

    def _alloc(self, want: int) -> tuple[int, torch.Tensor] | None:
        """Host pages for up to ``want`` pages: fewer when the pool is short, None when empty."""
        ps = self.pool.page_size
        n = want
        while n > 0:
            idx = self.pool.alloc(n * ps)
            if idx is not None:
                return n, idx
            n = min(want, self.pool.available_size() // ps)
        return None

    def _free_late(self, indices: torch.Tensor) -> Callable[[Any], None]:
        def _free(_value: Any) -> None:
            self.pool.free(indices)

        return _free

    def _run_prefetch(self, op: PrefetchOperation) -> str:
        """Load the leading pages of ``op``; returns why it stopped ('' = all loaded)."""
        if not op.wanted():
            return "taken before the L3 lookup started"
        ps = self.pool.page_size
        keys = self.keys(op.page_hashes)
        prefix = self.keys(op.prefix_hashes)
        out = self.guard.call(
            "batch_exists", self.backend.batch_exists, keys, HiCacheStorageExtraInfo(prefix_keys=prefix),
            check=check_count(len(keys)), retries=READ_WRITE_RETRIES,
        )
        if not out.ok:
            return out.detail
        hit = int(out.value)
        op.set_hit_pages(hit)
        if hit * ps < self.knobs.prefetch_threshold:
            return f"{hit * ps} tokens in L3, below prefetch_threshold {self.knobs.prefetch_threshold}"
        loaded_prefix = list(prefix)
        for start in range(0, hit, BATCH_PAGES):
            if self._stopping.is_set() or not op.wanted():
                return "stopped"
            want = min(hit, start + BATCH_PAGES) - start
            got = self._alloc(want)
            if got is None:
                return "host pool full"
            n, indices = got
            batch = keys[start : start + n]
            t0 = time.perf_counter()
            out = self.guard.call(
                "batch_get_v1", self.backend.batch_get_v1, batch, indices,
                HiCacheStorageExtraInfo(prefix_keys=list(loaded_prefix)),
                check=check_bool_list(n), retries=READ_WRITE_RETRIES,
                on_late=self._free_late(indices),
            )
            elapsed = time.perf_counter() - t0
            if not out.ok:
                if out.kind != "timeout":  # a timed-out call frees its pages when it returns
                    self.pool.free(indices)
                return out.detail
            good = _leading_true(out.value)
            if good < n:
                self.pool.free(indices[good * ps :])
                self.metrics.refused(n - good, op="batch_get_v1")
            if good:
                keep = indices[: good * ps]
                self.metrics.prefetched(good, good * self.pool.page_bytes, elapsed)
                if not op.deliver(op.page_hashes[start : start + good], keep):
                    self.pool.free(keep)
            if good < n:
                return f"page {start + good} failed to load; hit truncated to {start + good} pages"
            if n < want:
                return f"host pool full after {start + n} pages"
            loaded_prefix.extend(batch)
        return ""

    # -------------------------------------------------------------- backup worker
    def _backup_loop(self) -> None:
        while True:
            job = self._bq.get()
            if job is None:
                return
            with self._lock:
                self._busy_backup = True
            try:
                self._run_backup(job)
            except Exception:
                log.exception("backup failed")
                job.on_done([False] * len(job.keys))
            finally:
                with self._lock:
                    self._busy_backup = False

    def _run_backup(self, job: BackupJob) -> None:
        ps = self.pool.page_size
        total = len(job.keys)
        results = [False] * total
        for start in range(0, total, BATCH_PAGES):
            if self._stopping.is_set() or self.backing_off:
                break
            end = min(total, start + BATCH_PAGES)
            batch = job.keys[start:end]
            idx = job.host_indices[start * ps : end * ps]

            def _late(value: Any, start: int = start, end: int = end) -> None:
                # The timed-out batch returned: record what landed, then release the caller.
                if isinstance(value, (list, tuple)) and len(value) == end - start:
                    results[start:end] = [bool(v) for v in value]
                job.on_done(results)

            t0 = time.perf_counter()
            out = self.guard.call(
                # As SGLang does: the keys before this batch, so chain-aware stores (hf3fs'
                # tail-first eviction) know each page's prefix.
                "batch_set_v1", self.backend.batch_set_v1, batch, idx,
                HiCacheStorageExtraInfo(prefix_keys=list(job.keys[:start])),
                check=check_bool_list(end - start), on_late=_late, retries=READ_WRITE_RETRIES,
            )
            elapsed = time.perf_counter() - t0
            if out.ok:
                oks = [bool(v) for v in out.value]
                results[start:end] = oks
                stored = sum(oks)
                if stored < len(oks):
                    self.metrics.refused(len(oks) - stored)
                self._note_refusal(stored == 0 and len(oks) > 0)
                self.metrics.backed_up(stored, len(oks) - stored, stored * self.pool.page_bytes, elapsed)
            else:
                self.metrics.backed_up(0, end - start, 0, elapsed)
                if out.kind == "timeout":
                    return  # on_done runs when the call returns (the pages are still being read)
        job.on_done(results)


def _leading_true(values: Any) -> int:
    count = 0
    for v in values:
        if not v:
            break
        count += 1
    return count


def _put_sentinel(q: queue.Queue[Any]) -> None:
    """Wake a worker to exit. The queue was just drained and takes no new work, so there is room."""
    try:
        q.put(None, timeout=1.0)
    except queue.Full:
        log.warning("a storage worker queue stayed full while stopping; its worker exits when it drains")


def _close_quietly(backend: HiCacheStorage, name: str) -> None:
    try:
        backend.close()
    except Exception:
        log.warning("closing backend %r raised", name, exc_info=True)


def _drain(q: queue.Queue[Any]) -> list[Any]:
    items: list[Any] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return items
        if item is not None:
            items.append(item)
