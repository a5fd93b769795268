"""``NixlStore``: hicache's ``nixl`` backend, pages moved by NVIDIA NIXL storage plugins.

``NixlStore(config)`` chooses a NIXL plugin (see ``session.py``) and returns the flavour
that fits it: ``NixlFileStore`` (3FS, POSIX, GDS_MT, GDS: one file per page) or
``NixlObjectStore`` (OBJ: one S3 object per page). The host pool is registered with NIXL
once; v1 batches are then descriptor lists between pool memory and files or objects.

Everything on the request path reports failure as a per-page result and a counter; NIXL's
exceptions stop here.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hicache_core.memory.pages import PageGeometry, page_geometry
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError
from hicache_core.spec.storage import HiCacheStorage
from hicache_nixl.session import NixlSession
from hicache_nixl.settings import NixlSettings
from hicache_nixl.spans import PageSpans
from hicache_nixl.transfer import Outcome, Transfers

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

class Counters:
    """Thread-safe named counters, for ``get_stats``."""

    NAMES = ("get_pages", "hits", "misses", "set_pages", "stored", "failed_pages", "timed_out_pages",
             "bytes_read", "bytes_written", "size_mismatches", "query_errors", "skipped_non_writer")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class NixlStore(HiCacheStorage):
    """The ``nixl`` backend; constructing it returns the flavour of the chosen plugin."""

    contract_version = "1.0"
    # What the file flavour (the one ``auto`` picks with a stock NIXL wheel) can do;
    # NixlObjectStore declares its own.
    capabilities = Capabilities(
        zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=False,
        requires_page_layout=False, mla=True,
        # A page file counts only at the KV page's size: v2 sidecar states are misses.
        sidecar_pools=False,
    )
    flavour = ""

    def __new__(cls, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> NixlStore:
        if cls is not NixlStore:
            return super().__new__(cls)
        from hicache_nixl.file_store import NixlFileStore
        from hicache_nixl.object_store import NixlObjectStore

        settings = NixlSettings.resolve((config or HiCacheStorageConfig()).extra())
        session = NixlSession(settings)
        flavour: type[NixlStore] = NixlObjectStore if session.selection.flavour == "obj" else NixlFileStore
        instance = super().__new__(flavour)
        instance.__dict__["_new_session"] = session  # handed to __init__, which Python calls next
        return instance

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        session: NixlSession | None = self.__dict__.pop("_new_session", None)
        if session is None:
            session = NixlSession(NixlSettings.resolve(self.config.extra()))
        if session.selection.flavour != self.flavour:
            raise BackendConfigError(
                f"nixl: {type(self).__name__} serves {self.flavour} plugins, but plugin "
                f"{session.selection.plugin} was chosen; construct NixlStore to get the matching flavour"
            )
        self.session = session
        self.settings = session.settings
        self.selection = session.selection
        self.agent: Any = session.agent
        self.backend_name = session.backend
        self.transfers = Transfers(self.agent, self.backend_name, self.selection.segment,
                                   self.settings.transfer_timeout_s)
        self.counters = Counters()
        self._pool_reg: Any = None
        self._pool_range = (0, 0)
        #: Where each pool page's pieces lie (the core's rule), set when the pool is registered.
        self._geometry: PageGeometry | None = None
        self._closed = False

    # ------------------------------------------------------------------ flavour hooks
    @abstractmethod
    def _read(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
        """Fill each page's pieces from storage; ``pooled``: the pieces are in the host pool."""

    @abstractmethod
    def _write(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
        """Store each page's pieces (concatenated) under its key."""

    @abstractmethod
    def _exists(self, skeys: list[str], stop_at_miss: bool = False) -> list[bool]:
        """Whether each page is stored, without reading it (may stop after the first miss)."""

    @abstractmethod
    def _stored_size(self, skey: str) -> int | None:
        """Bytes of the stored page, or None when absent or unknown."""

    def _flavour_stats(self) -> dict[str, Any]:
        return {}

    def _on_pool(self, pool: HostKVPool) -> None:
        """Called after the pool is registered with NIXL."""

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._deregister_pool()
        buf = mem_pool_host.kv_buffer
        # One registration for the whole pool; every batch then only builds descriptors.
        self._pool_reg = self.agent.register_memory(buf, backends=[self.backend_name])
        start = buf.data_ptr()
        self._pool_range = (start, start + buf.numel() * buf.element_size())
        self._geometry = page_geometry(mem_pool_host)
        self._on_pool(mem_pool_host)

    def _deregister_pool(self) -> None:
        if self._pool_reg is not None:
            try:
                self.agent.deregister_memory(self._pool_reg, backends=[self.backend_name])
            except Exception as exc:
                log.warning("nixl: deregistering the host pool failed: %s", exc)
            self._pool_reg = None
            self._pool_range = (0, 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transfers.close()
        self._deregister_pool()

    def get_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "backend": "nixl", "flavour": self.flavour, "nixl_version": self.session.version,
            **self.selection.report(),
            **self.counters.snapshot(),
            "transfer_errors": self.transfers.errors, "transfer_timeouts": self.transfers.timeouts,
            "unreleased_handles": self.transfers.unreleased_total,
            "pending_releases": self.transfers.pending_releases,
            "transfer_timeout_s": self.settings.transfer_timeout_s,
        }
        stats.update(self._flavour_stats())
        return stats

    # ------------------------------------------------------------------ keys and pieces
    def _skeys(self, keys: Sequence[str]) -> list[str]:
        # The pool namespace (model, page format, shard): a page of an incompatible pool is a miss.
        return [self.page_key(k) for k in keys]

    @property
    def page_bytes(self) -> int | None:
        """Bytes of one stored page of the registered pool; None before one is registered."""
        return self._geometry.page_bytes if self._geometry is not None else None

    def _pool_spans(self, pool: HostKVPool, host_indices: torch.Tensor) -> PageSpans:
        geometry = self._geometry
        if geometry is None:
            geometry = self._geometry = page_geometry(pool)
        return PageSpans.of_pool_pages(geometry, pool.indices_to_pages(host_indices))

    def _in_pool(self, ptr: int, nbytes: int) -> bool:
        start, end = self._pool_range
        return start <= ptr and ptr + nbytes <= end

    # ------------------------------------------------------------------ batch runner
    def _run_pages(self, op: str, local: np.ndarray, remote: np.ndarray, pieces: int) -> list[Outcome]:
        """Run one request for all pages; when it fails, run each page alone to find which.

        ``local``/``remote``: descriptor rows, ``pieces`` consecutive rows per page. A timeout
        is not retried: it would multiply the wait.
        """
        pages = len(local) // pieces if pieces else 0
        if pages == 0:
            return []
        outcome = self.transfers.run(op, local, remote)
        if outcome is not Outcome.FAILED or pages == 1:
            return [outcome] * pages
        return [
            self.transfers.run(op, local[i * pieces:(i + 1) * pieces], remote[i * pieces:(i + 1) * pieces])
            for i in range(pages)
        ]

    def _count_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        self.counters.add("failed_pages", sum(o is Outcome.FAILED for o in outcomes))
        self.counters.add("timed_out_pages", sum(o is Outcome.TIMEOUT for o in outcomes))

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        return self._read(self._skeys(keys), self._pool_spans(pool, host_indices), pooled=True)

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        if not self.config.is_writer_rank:
            # MLA: every rank holds the same KV and rank 0 writes it (SGLang's convention).
            self.counters.add("skipped_non_writer", len(keys))
            return [True] * len(keys)
        return self._write(self._skeys(keys), self._pool_spans(pool, host_indices), pooled=True)

    # ------------------------------------------------------------------ tensors (legacy API)
    def _with_registered(self, tensors: list[torch.Tensor], fn: Any) -> list[bool]:
        """Register the tensors outside the pool for the duration of ``fn(spans)``."""
        spans = PageSpans.of_tensors(tensors)
        lengths = spans.lengths()
        outside = [i for i, t in enumerate(tensors) if not self._in_pool(t.data_ptr(), lengths[i])]
        reg = None
        try:
            if outside:
                reg = self.agent.register_memory(spans.take(outside).local_rows(), "DRAM",
                                                 backends=[self.backend_name])
        except Exception as exc:
            log.warning("nixl: registering %d buffers failed: %s", len(outside), exc)
            self.counters.add("failed_pages", len(tensors))
            return [False] * len(tensors)
        try:
            result: list[bool] = fn(spans)
            return result
        finally:
            if reg is not None:
                try:
                    self.agent.deregister_memory(reg, backends=[self.backend_name])
                except Exception as exc:
                    log.warning("nixl: deregistering buffers failed: %s", exc)

    def _page_bytes_hint(self, skey: str) -> int | None:
        page_bytes = self.page_bytes
        return page_bytes if page_bytes is not None else self._stored_size(skey)

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        skeys = self._skeys(keys)
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        out: list[torch.Tensor | None] = [None] * len(keys)
        bufs: list[torch.Tensor] = []
        slots: list[int] = []
        for i, (skey, target) in enumerate(zip(skeys, targets)):
            if isinstance(target, torch.Tensor) and target.is_contiguous() and target.device.type == "cpu":
                bufs.append(target.view(-1).view(torch.uint8))
            else:
                size = (target.numel() * target.element_size() if isinstance(target, torch.Tensor)
                        else self._page_bytes_hint(skey))
                if size is None:
                    self.counters.add("get_pages")
                    self.counters.add("misses")
                    continue
                bufs.append(torch.empty(size, dtype=torch.uint8))
            slots.append(i)
        if not bufs:
            return out
        ok = self._with_registered(bufs, lambda spans: self._read([skeys[i] for i in slots], spans, pooled=False))
        for i, buf, hit in zip(slots, bufs, ok):
            if not hit:
                continue
            target = targets[i]
            if isinstance(target, torch.Tensor):
                if buf.data_ptr() != target.data_ptr():  # read through a staging buffer
                    target.copy_(buf.view(target.dtype).view(target.shape))
                out[i] = target
            else:
                pool = self.mem_pool_host
                dtype = pool.kv_buffer.dtype if pool is not None else torch.uint8
                out[i] = buf.view(dtype) if buf.numel() % dtype.itemsize == 0 else buf
        return out

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location] if target_location is not None else None)[0]

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
        target_sizes: Any | None = None,
    ) -> bool:
        if values is None:
            return False
        vals = list(values)
        if len(vals) != len(keys):
            raise ValueError(f"batch_set: {len(keys)} keys but {len(vals)} values")
        if not keys:
            return True
        if not self.config.is_writer_rank:
            self.counters.add("skipped_non_writer", len(keys))
            return True
        if not all(isinstance(v, torch.Tensor) for v in vals):
            return False
        bufs = [v.detach().to("cpu").contiguous().view(-1).view(torch.uint8) for v in vals]
        ok = self._with_registered(bufs, lambda spans: self._write(self._skeys(keys), spans, pooled=False))
        return all(ok)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value] if value is not None else None)

    # ------------------------------------------------------------------ existence
    def exists(self, key: str) -> bool:
        return self._exists(self._skeys([key]))[0]

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        return self._exists(self._skeys(keys)) if keys else []

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        found = self._exists(self._skeys(keys), stop_at_miss=True) if keys else []
        count = 0
        for hit in found:
            if not hit:
                break
            count += 1
        return count
