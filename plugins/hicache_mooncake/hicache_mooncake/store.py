"""``MooncakeStore``: hicache's L3 on a Mooncake Store cluster.

What a page is in Mooncake: its stored bytes (``hicache_core.memory.pages``: the page's slice
of the pool's ``kv_buffer`` in buffer order) as two objects, the K half then the V half (MHA),
or one object (MLA, written by its writer rank only). Every path stores those bytes: the
zero-copy path moves them straight from and into the host pool's pieces (``zero_copy``), the
flat ``get``/``set`` paths through a registered staging buffer (``flat_io``), so either path
reads what the other wrote. Object names follow the configured key scheme (``naming``):
``hicache`` (default; the core's namespace, so an incompatible pool's page is a miss) or
``sglang`` (SGLang 0.5.23's own names, guarded by a format record, ``format_record``).

Why a wrong or stale page is never served:

- Names are content addresses: the page hash chains every token id of the prefix, and the
  namespace (``hicache``) or the format record (``sglang``) pins model, dtype, geometry, byte
  order and shard; Mooncake keeping the first value of a duplicate put keeps the right bytes.
- A page counts as present, and a read as good, only when *every* object of the page is there
  and the bytes read equal the object size; a half-written page reads as a miss.
- Mooncake makes an object visible only after its data transfer completed.
- A master restart drops all metadata: every name reads as a miss afterwards.

Failures are return codes in Mooncake; each becomes a per-page False/None here and is counted
by name in ``get_stats()["errors"]`` (``objects``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

import torch

from hicache_core.memory.pages import page_format, pool_kind
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import HiCacheError, LayoutError
from hicache_core.spec.storage import HiCacheStorage
from hicache_mooncake import codes
from hicache_mooncake.client import tcp_reachable
from hicache_mooncake.client_pool import client_pool
from hicache_mooncake.config import MooncakeSettings, load_settings
from hicache_mooncake.flat_io import StagingBuffer, as_bytes, get_pages, object_sizes, put_pages
from hicache_mooncake.format_record import FormatRecord, record_value
from hicache_mooncake.heap import return_freed_memory
from hicache_mooncake.lease import ClientLease
from hicache_mooncake.naming import PageObjectNames, hicache_names, scheme_of, sglang_names
from hicache_mooncake.plugin import CAPABILITIES
from hicache_mooncake.zero_copy import PagePieces

log = logging.getLogger(__name__)

#: Pages per Mooncake call (SGLang issues I/O in batches of at most 128 pages).
MAX_BATCH_PAGES = 128
#: One probe object for every client: its bytes are a constant, so duplicate puts agree.
PROBE_KEY = "__hicache_mooncake_health_probe__"


class MooncakeStore(HiCacheStorage):
    """HiCache storage on Mooncake Store (see the module docstring for the data layout)."""

    contract_version: ClassVar[str] = "1.0"
    capabilities = CAPABILITIES
    #: Extra-config keys the node's status may show (every other value is hidden).
    config_public_fields: ClassVar[tuple[str, ...]] = (
        "master_server_address", "local_hostname", "protocol", "device_name", "global_segment_size",
        "local_buffer_size", "scheme", "extra_backend_tag",
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        extra = self.config.extra()
        self.settings: MooncakeSettings = load_settings(extra)
        self.scheme = scheme_of(extra)
        self._is_mla = bool(self.config.is_mla_model)
        # Validated before connecting: what the sglang scheme does not implement (DCP, split heads).
        self._sglang: PageObjectNames | None = sglang_names(self.config) if self.scheme == "sglang" else None
        self._names = self._make_names()
        self._pieces: PagePieces | None = None
        self._record: FormatRecord | None = None
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {
            "pages_written": 0, "pages_write_failed": 0, "pages_read": 0, "pages_read_failed": 0,
            "bytes_written": 0, "bytes_read": 0, "pages_skipped_non_writer": 0,
        }
        self._probe_buf = torch.zeros(64, dtype=torch.uint8)
        self._probe_lock = threading.Lock()
        parts = 1 if self._is_mla else 2
        # +1: an existence check carries the format record's name in the same call.
        self._lease = ClientLease(self.settings, MAX_BATCH_PAGES * parts + 1)
        self._objects = self._lease.objects
        self._staging = StagingBuffer(self._lease.register, self._lease.unregister)
        try:
            self._lease.register(self._probe_buf)
        except BaseException:
            self.close()
            raise
        # Setting a client up leaves freed scratch memory in glibc's arenas, resident (``heap``).
        return_freed_memory()

    def _make_names(self) -> PageObjectNames:
        return self._sglang or hicache_names(self.namespace, self._is_mla)

    @property
    def raw_client(self) -> Any:
        """The underlying ``MooncakeDistributedStore`` (benchmarks and diagnostics only)."""
        return self._objects.client

    @property
    def pieces(self) -> PagePieces | None:
        """Where the registered pool's page objects lie (None before a pool is registered)."""
        return self._pieces

    def object_keys(self, keys: list[str]) -> list[str]:
        """The Mooncake object names of ``keys``, page by page (K then V for MHA)."""
        return self._names.objects(keys)

    # ------------------------------------------------------------------ memory registration
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Take hicache's ``HostKVPool`` or an SGLang host pool, in any layout with a page format.

        Under ``scheme: sglang`` this claims the namespace's format record; when it names
        another page format, every page is a miss and every write refused, counted (``format_record``).
        """
        kind = pool_kind(mem_pool_host)
        if (kind == "mla") != self._is_mla:
            raise LayoutError(
                f"mooncake: the host pool is {kind.upper()} but the storage config says "
                f"is_mla_model={self._is_mla}; they must agree (it decides the object layout)"
            )
        if self.mem_pool_host is mem_pool_host:
            return
        pieces = PagePieces(mem_pool_host, 1 if self._is_mla else 2)
        record = None
        if self._sglang is not None:
            value = record_value(page_format(mem_pool_host).tag(), self.config)
            record = FormatRecord(self._objects, self._sglang.record_key(), value)
            record.check()
        old = self._pieces
        self._lease.register_range(*pieces.buffer)
        if old is not None:
            self._lease.unregister(old.buffer[0])
        self._pieces, self._record = pieces, record
        super().register_mem_pool_host(mem_pool_host)
        self._names = self._make_names()
        return_freed_memory()

    # ------------------------------------------------------------------ guards and counters
    def _io_allowed(self, n: int, what: str) -> bool:
        """False (counted) when this scheme cannot vouch for the pages' format right now."""
        if self._sglang is not None and self._pieces is None:
            self._objects.errors.add("no_pool", n, f"{what}: scheme sglang needs a registered host pool")
            return False
        record = self._record
        if record is not None and record.mismatch is not None:
            record.refuse(n, what)
            return False
        return True

    def _bump(self, **deltas: int) -> None:
        with self._counts_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    def _fold(self, per_object: list[bool]) -> list[bool]:
        if self._names.parts == 1:
            return per_object
        return [k and v for k, v in zip(per_object[0::2], per_object[1::2])]

    # ------------------------------------------------------------------ zero-copy v1
    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        if not self.config.is_writer_rank:
            # MLA: every rank holds the same KV and the writer rank stores it; the others succeed idly.
            self._bump(pages_skipped_non_writer=len(keys))
            return [True] * len(keys)
        pieces = self._pieces
        assert pieces is not None  # set with the pool
        if not self._io_allowed(len(keys), "batch_set_v1"):
            self._bump(pages_write_failed=len(keys))
            return [False] * len(keys)
        plan = pieces.plan(host_indices)
        result = self._fold(self._objects.put(self._names.objects(keys), plan.ptrs, plan.sizes))
        good = sum(result)
        self._bump(pages_written=good, pages_write_failed=len(keys) - good, bytes_written=good * pieces.page_bytes)
        return result

    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pieces = self._pieces
        assert pieces is not None
        if not self._io_allowed(len(keys), "batch_get_v1"):
            self._bump(pages_read_failed=len(keys))
            return [False] * len(keys)
        plan = pieces.plan(host_indices)
        objs = self._names.objects(keys)
        result = self._fold(self._objects.get(objs, plan.ptrs, plan.sizes, [plan.object_nbytes] * len(objs)))
        good = sum(result)
        self._bump(pages_read=good, pages_read_failed=len(keys) - good, bytes_read=good * pieces.page_bytes)
        return result

    # ------------------------------------------------------------------ existence
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        """Per page: every object present. The hot path of every prefetch decision."""
        if not keys:
            return []
        record = self._record
        if record is None and not self._io_allowed(len(keys), "exists"):
            return [False] * len(keys)
        objs = self._names.objects(keys)
        if record is not None:
            objs.append(record.key)
        rcs = self._objects.exist(objs)
        if record is not None and not record.recheck(rcs.pop()):
            record.refuse(len(keys), "exists")
            return [False] * len(keys)
        if self._names.parts == 1:
            return [rc == 1 for rc in rcs]
        return [k == 1 and v == 1 for k, v in zip(rcs[0::2], rcs[1::2])]

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        """Leading pages present; asks Mooncake 128 pages at a time and stops at the first gap."""
        hits = 0
        for start in range(0, len(keys), MAX_BATCH_PAGES):
            for present in self.exists_many(keys[start : start + MAX_BATCH_PAGES], extra_info):
                if not present:
                    return hits
                hits += 1
        return hits

    def exists(self, key: str) -> bool:
        return self.exists_many([key])[0]

    # ------------------------------------------------------------------ flat pages (staging)
    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        if not keys:
            return True
        if not self.config.is_writer_rank:
            self._bump(pages_skipped_non_writer=len(keys))
            return True
        if not self._io_allowed(len(keys), "batch_set"):
            self._bump(pages_write_failed=len(keys))
            return False
        vals = list(values) if values is not None else list(target_locations or [None] * len(keys))
        sizes_in = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        names: list[list[str]] = []
        pages: list[torch.Tensor] = []
        sizes: list[list[int]] = []
        for key, val, size in zip(keys, vals, sizes_in):
            flat = as_bytes(val, size)
            obj_sizes = object_sizes(flat.numel(), self._names.parts) if flat is not None else None
            if flat is None or obj_sizes is None:
                self._objects.errors.add("bad_value", 1, f"set({key!r}): not a CPU tensor or address+size of one page")
                continue
            names.append(self._names.objects([key]))
            pages.append(flat)
            sizes.append(obj_sizes)
        result = put_pages(self._objects, self._staging, names, pages, sizes) if pages else []
        good = sum(result)
        self._bump(pages_written=good, pages_write_failed=len(keys) - good,
                   bytes_written=sum(p.numel() for p, r in zip(pages, result) if r))
        return good == len(keys)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location], None,
                              [target_sizes] if target_sizes is not None else None)

    def _stored_nbytes(self, key: str) -> int | None:
        """Bytes of the page stored under ``key`` (the pool's page size, else asked of Mooncake)."""
        if self._pieces is not None:
            return self._pieces.page_bytes
        total = 0
        for obj in self._names.objects([key]):
            size = self._objects.size_of(obj)
            if size is None:
                return None
            total += size
        return total

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        if not keys:
            return []
        out: list[torch.Tensor | None] = [None] * len(keys)
        if not self._io_allowed(len(keys), "batch_get"):
            self._bump(pages_read_failed=len(keys))
            return out
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes_in = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        plan: list[tuple[int, torch.Tensor | None]] = []
        names: list[list[str]] = []
        sizes: list[list[int]] = []
        for i, (key, loc, size) in enumerate(zip(keys, locs, sizes_in)):
            dest = as_bytes(loc, size) if loc is not None else None
            nbytes = dest.numel() if dest is not None else self._stored_nbytes(key)
            obj_sizes = object_sizes(nbytes, self._names.parts) if nbytes else None
            if obj_sizes is not None:
                plan.append((i, dest))
                names.append(self._names.objects([key]))
                sizes.append(obj_sizes)

        def deliver(j: int, data: torch.Tensor) -> None:
            i, dest = plan[j]
            if dest is not None:
                dest.copy_(data)
                loc = locs[i]
                out[i] = loc if isinstance(loc, torch.Tensor) else dest
            else:
                out[i] = self._typed(data.clone())

        if plan:
            get_pages(self._objects, self._staging, names, sizes, deliver)
        hits = sum(t is not None for t in out)
        nbytes_read = sum(sum(s) for (i, _), s in zip(plan, sizes) if out[i] is not None)
        self._bump(pages_read=hits, pages_read_failed=len(keys) - hits, bytes_read=nbytes_read)
        return out

    def _typed(self, raw: torch.Tensor) -> torch.Tensor:
        pool = self.mem_pool_host
        if pool is None:
            return raw
        dtype = pool.kv_buffer.dtype
        return raw.view(dtype) if raw.numel() % dtype.itemsize == 0 else raw

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location] if target_location is not None else None,
                              [target_sizes] if target_sizes is not None else None)[0]

    # ------------------------------------------------------------------ admin
    def delete(self, key: str) -> bool:
        """Remove a page's objects; True when none is left (absent counts as removed).

        Not forced: an object under a read lease (a reader is transferring it) stays, and
        delete answers False; forcing would let the reader copy freed memory.
        """
        return self._objects.remove(self._names.objects([key]))

    def clear(self) -> None:
        """Remove every object in the cluster that has no read lease (shared: all nodes' pages).

        Under ``scheme: sglang`` this namespace's format record (hard-pinned, so ``remove_all``
        leaves it) goes too; an attached store claims it again on its next existence check.
        """
        (rc,) = self._objects.call("remove_all", 1)
        if rc < 0:
            raise HiCacheError(f"mooncake: remove_all failed ({codes.name_of(rc)}, {rc})")
        if self._sglang is not None:
            self._objects.remove_forced(self._sglang.record_key())
        log.info("mooncake: clear removed %d objects", rc)

    def health_check(self) -> None:
        """Raise unless the master answers and a tiny object round-trips through the cluster.

        Mooncake's own ``health_check()`` keeps answering 0 after the master is killed, so this
        makes real calls: a TCP connect to the master, ``batch_is_exist`` on a probe key and a
        put + get of a 64-byte probe object (it finds dead storage nodes). A pool too full for
        the probe still counts as healthy: it serves reads and evicts by itself.
        """
        if self._objects.closed:
            raise HiCacheError("mooncake: backend is closed")
        why = tcp_reachable(self.settings.master_server_address, timeout_s=1.0)
        if why:
            raise HiCacheError(f"mooncake: master {self.settings.master_server_address} unreachable: {why}")
        self._objects.master_answered()
        try:
            with self._probe_lock:
                self._objects.probe(PROBE_KEY, self._probe_buf)
        except HiCacheError as exc:
            # Failing while the master answers is the client's own fault (a master just
            # restarted answers master-down codes first, which set ``master_down``).
            if not self._objects.master_down and tcp_reachable(self.settings.master_server_address, 1.0) is None:
                self._lease.suspect = True
                log.info("mooncake: health check failed while the master answers (%s); this client "
                         "will be closed, not reused", exc)
            raise

    def get_stats(self) -> dict[str, Any]:
        with self._counts_lock:
            stats: dict[str, Any] = dict(self._counts)
        errors = self._objects.errors
        stats["errors"] = errors.snapshot()
        stats["errors_total"] = errors.total()
        stats["last_error"] = errors.last
        stats["master"] = self.settings.master_server_address
        stats["master_down"] = self._objects.master_down
        stats["protocol"] = self.settings.protocol
        pool = client_pool()
        stats["clients"] = {"opened": pool.opened, "reused": pool.reused, "closed": pool.closed, "idle": pool.idle()}
        stats["scheme"] = self.scheme
        stats["names"] = self._names.page_name("{hash}") + "|".join(self._names.tails)
        if self._record is not None:
            stats["format_record"] = self._record.key
            stats["format_mismatch"] = self._record.mismatch
        return stats

    def close(self) -> None:
        self._lease.release()

    def __repr__(self) -> str:
        return f"MooncakeStore({self.settings.describe()}, scheme={self.scheme}, names={self._names.page_name('{hash}')!r})"
