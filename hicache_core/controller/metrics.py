"""Prometheus metrics of a storage controller.

Every controller labels its series with ``rank``; controllers of one process may share a
``CollectorRegistry`` (one family per metric, one child per rank) or each keep a private one.
Plain counters are kept beside the Prometheus ones for ``status()``.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: ``() -> (backend name, its get_stats() answer)`` of one rank, or None when detached.
StatsSource = Callable[[], "tuple[str, dict[str, Any]] | None"]

#: GB/s buckets for the bandwidth histograms (page-sized transfers to RDMA-class links).
_BANDWIDTH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, float("inf"))

BREAKER_STATES = {"closed": 0, "open": 1}


@dataclass
class _Families:
    prefetch_pages: Counter
    prefetch_bytes: Counter
    backup_pages: Counter
    backup_bytes: Counter
    backup_failed_pages: Counter
    hit_tokens: Counter
    prefetch_requests: Counter
    failures: Counter
    breaker_state: Gauge
    breaker_trips: Counter
    attached: Gauge
    attach_total: Counter
    detach_total: Counter
    prefetch_bw: Histogram
    prefetch_request_seconds: Histogram
    backup_bw: Histogram
    prefetch_bw_last: Gauge
    backup_bw_last: Gauge
    refused_pages: Counter
    queue_overflows: Counter
    backend_stats: BackendStatsCollector


def _make_families(registry: CollectorRegistry) -> _Families:
    r = registry
    return _Families(
        prefetch_pages=Counter("hicache_prefetch_pages", "Pages loaded from L3 into L2", ["rank"], registry=r),
        prefetch_bytes=Counter("hicache_prefetch_bytes", "Bytes loaded from L3 into L2", ["rank"], registry=r),
        backup_pages=Counter("hicache_backup_pages", "Pages written from L2 to L3", ["rank"], registry=r),
        backup_bytes=Counter("hicache_backup_bytes", "Bytes written from L2 to L3", ["rank"], registry=r),
        backup_failed_pages=Counter(
            "hicache_backup_failed_pages", "Pages a backup did not store", ["rank"], registry=r
        ),
        hit_tokens=Counter(
            "hicache_l3_hit_tokens", "Tokens handed to requests from L3 prefetches", ["rank"], registry=r
        ),
        prefetch_requests=Counter(
            "hicache_prefetch_requests", "Prefetch operations started", ["rank"], registry=r
        ),
        failures=Counter(
            "hicache_backend_failures", "Failed backend calls by kind (error, timeout, bad_result, pages)",
            ["rank", "op", "kind"], registry=r,
        ),
        breaker_state=Gauge("hicache_breaker_state", "Circuit breaker: 0 closed, 1 open", ["rank"], registry=r),
        breaker_trips=Counter("hicache_breaker_trips", "Times the breaker opened", ["rank"], registry=r),
        attached=Gauge("hicache_backend_attached", "1 while a backend is attached", ["rank"], registry=r),
        attach_total=Counter("hicache_attach", "Attach operations by result", ["rank", "result"], registry=r),
        detach_total=Counter("hicache_detach", "Detach operations by cause", ["rank", "cause"], registry=r),
        prefetch_bw=Histogram(
            "hicache_prefetch_bandwidth_gbps", "GB/s of each L3 -> L2 batch", ["rank"],
            buckets=_BANDWIDTH_BUCKETS, registry=r,
        ),
        backup_bw=Histogram(
            "hicache_backup_bandwidth_gbps", "GB/s of each L2 -> L3 batch", ["rank"],
            buckets=_BANDWIDTH_BUCKETS, registry=r,
        ),
        prefetch_request_seconds=Histogram(
            "hicache_prefetch_request_seconds", "Seconds of one request's L3 prefetch (lookup + loads) that hit",
            ["rank"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        ),
        prefetch_bw_last=Gauge(
            "hicache_prefetch_bandwidth_last_gbps", "GB/s of the last L3 -> L2 batch", ["rank"], registry=r
        ),
        backup_bw_last=Gauge(
            "hicache_backup_bandwidth_last_gbps", "GB/s of the last L2 -> L3 batch", ["rank"], registry=r
        ),
        refused_pages=Counter(
            "hicache_backend_refused_pages",
            "Pages a backend answered False for (full store, refused, missing): back-pressure, not failures",
            ["rank", "op"], registry=r,
        ),
        queue_overflows=Counter(
            "hicache_queue_overflows", "Prefetches / backups dropped because their queue was full (L2-only)",
            ["rank", "queue"], registry=r,
        ),
        backend_stats=_register_stats(r),
    )


class BackendStatsCollector(Collector):
    """Exports every numeric field of each attached backend's ``get_stats()``.

    ``hicache_backend_stat{backend, rank, stat}``: corrupt pages, evictions, a store's error
    codes... whatever the backend counts. Sources are read at scrape time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Callable[[], StatsSource | None]] = {}

    def add(self, rank: str, source: StatsSource) -> None:
        # The registry is process-wide: a bound method is held weakly, so a closed controller
        # (and its host pools and backend) is not kept alive until another node takes its rank.
        ref: Callable[[], StatsSource | None]
        if inspect.ismethod(source):
            ref = weakref.WeakMethod(source)
        else:
            ref = lambda: source  # noqa: E731
        with self._lock:
            self._sources[rank] = ref

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "hicache_backend_stat", "A numeric field of the attached backend's get_stats()",
            labels=["backend", "rank", "stat"],
        )
        with self._lock:
            refs = dict(self._sources)
        for rank, ref in sorted(refs.items()):
            source = ref()
            if source is None:  # its controller is gone
                with self._lock:
                    if self._sources.get(rank) is ref:
                        del self._sources[rank]
                continue
            try:
                got = source()
            except Exception:
                continue
            if got is None:
                continue
            backend, stats = got
            for name, value in sorted(numeric_stats(stats).items()):
                fam.add_metric([backend, rank, name], value)
        yield fam

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def numeric_stats(stats: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The numeric fields of a ``get_stats()`` answer, nested dicts flattened with ``.``."""
    out: dict[str, float] = {}
    for key, value in (stats or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(numeric_stats(value, name + "."))
    return out


def _register_stats(registry: CollectorRegistry) -> BackendStatsCollector:
    collector = BackendStatsCollector()
    registry.register(collector)
    return collector


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


def _families_for(registry: CollectorRegistry) -> _Families:
    with _FAMILIES_LOCK:
        fams = _FAMILIES.get(registry)
        if fams is None:
            fams = _make_families(registry)
            _FAMILIES[registry] = fams
        return fams


class ControllerMetrics:
    """The metrics of one controller (one rank)."""

    def __init__(self, registry: CollectorRegistry | None = None, rank: int = 0) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rank = str(rank)
        self._f = _families_for(self.registry)
        self._lock = threading.Lock()
        self.counters: dict[str, float] = {
            "prefetch_requests": 0, "prefetch_pages": 0, "prefetch_bytes": 0, "prefetch_seconds": 0,
            "hit_tokens": 0,
            "backup_requests": 0, "backup_pages": 0, "backup_bytes": 0, "backup_failed_pages": 0,
            "failures": 0, "timeouts": 0, "attaches": 0, "attach_failures": 0, "detaches": 0,
            "breaker_trips": 0, "reattaches": 0, "refused_pages": 0, "queue_overflows": 0,
        }
        f = self._f
        # Create this rank's series now, so they read 0 (not absent) before anything happens.
        for fam in (
            f.prefetch_pages, f.prefetch_bytes, f.backup_pages, f.backup_bytes, f.backup_failed_pages,
            f.hit_tokens, f.prefetch_requests, f.breaker_trips, f.prefetch_bw, f.backup_bw,
        ):
            fam.labels(rank=self.rank)
        f.breaker_state.labels(rank=self.rank).set(0)
        f.attached.labels(rank=self.rank).set(0)

    def _add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: (int(v) if float(v).is_integer() else v) for k, v in self.counters.items()}

    # -------------------------------------------------------------- events
    def prefetch_started(self) -> None:
        self._add("prefetch_requests")
        self._f.prefetch_requests.labels(rank=self.rank).inc()

    def prefetched(self, pages: int, nbytes: int, seconds: float) -> None:
        """``pages`` (``nbytes``) loaded from L3 into L2 by one backend call of ``seconds``."""
        self._add("prefetch_pages", pages)
        self._add("prefetch_bytes", nbytes)
        self._add("prefetch_seconds", seconds)
        self._f.prefetch_pages.labels(rank=self.rank).inc(pages)
        self._f.prefetch_bytes.labels(rank=self.rank).inc(nbytes)
        if nbytes and seconds > 0:
            gbps = nbytes / seconds / 1e9
            self._f.prefetch_bw.labels(rank=self.rank).observe(gbps)
            self._f.prefetch_bw_last.labels(rank=self.rank).set(gbps)

    def prefetch_finished(self, seconds: float, pages: int) -> None:
        """One request's whole L3 prefetch (lookup and loads) took ``seconds`` for ``pages``."""
        if pages:
            self._f.prefetch_request_seconds.labels(rank=self.rank).observe(seconds)

    def hit(self, tokens: int) -> None:
        self._add("hit_tokens", tokens)
        self._f.hit_tokens.labels(rank=self.rank).inc(tokens)

    def backup_started(self) -> None:
        self._add("backup_requests")

    def backed_up(self, pages: int, failed_pages: int, nbytes: int, seconds: float) -> None:
        self._add("backup_pages", pages)
        self._add("backup_bytes", nbytes)
        self._add("backup_failed_pages", failed_pages)
        self._f.backup_pages.labels(rank=self.rank).inc(pages)
        self._f.backup_bytes.labels(rank=self.rank).inc(nbytes)
        if failed_pages:
            self._f.backup_failed_pages.labels(rank=self.rank).inc(failed_pages)
        if nbytes and seconds > 0:
            gbps = nbytes / seconds / 1e9
            self._f.backup_bw.labels(rank=self.rank).observe(gbps)
            self._f.backup_bw_last.labels(rank=self.rank).set(gbps)

    def failure(self, op: str, kind: str) -> None:
        self._add("timeouts" if kind == "timeout" else "failures")
        self._f.failures.labels(rank=self.rank, op=op, kind=kind).inc()

    def refused(self, pages: int, op: str = "batch_set_v1") -> None:
        """Pages the backend said no to (or that back-pressure kept from it); not failures."""
        self._add("refused_pages", pages)
        self._f.refused_pages.labels(rank=self.rank, op=op).inc(pages)

    def overflow(self, queue: str) -> None:
        self._add("queue_overflows")
        self._f.queue_overflows.labels(rank=self.rank, queue=queue).inc()

    def stats_source(self, source: StatsSource) -> None:
        """Where this rank's backend counters come from (``hicache_backend_stat``)."""
        self._f.backend_stats.add(self.rank, source)

    def breaker(self, state: str) -> None:
        self._f.breaker_state.labels(rank=self.rank).set(BREAKER_STATES[state])
        if state == "open":
            self._add("breaker_trips")
            self._f.breaker_trips.labels(rank=self.rank).inc()

    def attach(self, ok: bool, reattach: bool = False) -> None:
        self._add("attaches" if ok else "attach_failures")
        if reattach and ok:
            self._add("reattaches")
        result = ("reattach" if reattach else "ok") if ok else "failed"
        self._f.attach_total.labels(rank=self.rank, result=result).inc()

    def set_attached(self, attached: bool) -> None:
        self._f.attached.labels(rank=self.rank).set(1 if attached else 0)

    def detach(self, cause: str) -> None:
        self._add("detaches")
        self._f.detach_total.labels(rank=self.rank, cause=cause).inc()

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one series of this rank (``_total`` suffix for counters)."""
        return self.registry.get_sample_value(name, {"rank": self.rank, **(labels or {})})
