"""``MooncakeStore``: hicache's L3 on a Mooncake Store cluster.

Layout of a page in Mooncake: MHA pages are two objects, ``{hash}{suffix}_k`` and
``{hash}{suffix}_v`` (the K and V halves, each contiguous in a ``page_first*`` host pool);
MLA pages are one object ``{hash}{suffix}``, written by tensor-parallel rank 0 only. The
zero-copy path registers the host pool's ``kv_buffer`` with Mooncake once and moves pages
with ``batch_put_from`` / ``batch_get_into`` straight from and into it; the legacy
``get``/``set`` path goes through a registered staging buffer with the same object keys, so
both paths read each other's pages.

Why a stale page can never be served:

- Keys are content addresses: the page hash chains every token id of the prefix, and the
  suffix names the model and the TP/PP sharding. Equal keys therefore mean equal bytes, so
  Mooncake keeping the old value on a duplicate put keeps the right value.
- A page counts as present, and a read as good, only when *every* object of the page is
  there and the byte count read equals the piece size; a half-written page (K stored, V
  failed) or a page written with another geometry reads as a miss.
- Mooncake makes an object visible only after its data transfer completed (put start/end),
  so a concurrent reader never sees a half-written object.
- A master restart drops all metadata: every key reads as a miss afterwards (the bytes left
  in storage nodes are unreachable and overwritten by new puts), so nothing from before the
  restart can be served under a key, and nothing written before is claimed as present.

Failures are return codes in Mooncake; each becomes a per-page False/None here and is counted
by name in ``get_stats()["errors"]``. When the master is unreachable every Mooncake call takes
seconds; after the first such failure the store checks the master's TCP port before each call
and fails fast while it is closed.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import HiCacheError, LayoutError
from hicache_core.spec.storage import HiCacheStorage
from hicache_mooncake import codes
from hicache_mooncake.client import open_client, tcp_reachable
from hicache_mooncake.codes import ErrorTally
from hicache_mooncake.config import MooncakeSettings, load_settings
from hicache_mooncake.plugin import CAPABILITIES

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

#: Pages per Mooncake call (SGLang issues I/O in batches of at most 128 pages).
MAX_BATCH_PAGES = 128
#: While the master is down, how long one TCP check of its port stays valid.
MASTER_CHECK_INTERVAL_S = 0.5
PROBE_KEY = "__hicache_mooncake_health_probe__"
_OK = frozenset({codes.OK})
_EXIST_ANSWERS = frozenset({0, 1})
_REMOVED = frozenset({codes.OK, codes.OBJECT_NOT_FOUND})


class MooncakeStore(HiCacheStorage):
    """HiCache storage on Mooncake Store (see the module docstring for the data layout)."""

    contract_version: ClassVar[str] = "1.0"
    capabilities = CAPABILITIES

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self.settings: MooncakeSettings = load_settings(self.config.extra())
        self._suffix = self.config.namespace_suffix()
        self._is_mla = bool(self.config.is_mla_model)
        # What follows a page hash in its object keys: one object (MLA) or K and V (MHA).
        self._tails: tuple[str, ...] = (
            (self._suffix,) if self._is_mla else (self._suffix + "_k", self._suffix + "_v")
        )
        self._errors = ErrorTally()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {
            "pages_written": 0, "pages_write_failed": 0, "pages_read": 0, "pages_read_failed": 0,
            "bytes_written": 0, "bytes_read": 0, "pages_skipped_non_writer": 0,
        }
        self._registered: list[int] = []
        self._staging: torch.Tensor | None = None
        self._staging_lock = threading.Lock()
        # One probe key for every client: its bytes are a constant, so duplicate puts agree
        # and probes leave no garbage behind.
        self._probe_key = PROBE_KEY
        self._probe_buf = torch.zeros(64, dtype=torch.uint8)
        self._master_down = False
        self._master_checked_at = 0.0
        self._master_lock = threading.Lock()
        self._closed = False
        self._probe_lock = threading.Lock()
        self._client: Any = open_client(self.settings)
        try:
            self._register(self._probe_buf)
        except BaseException:
            self.close()
            raise

    @property
    def raw_client(self) -> Any:
        """The underlying ``MooncakeDistributedStore`` (benchmarks and diagnostics only)."""
        return self._client

    def object_keys(self, keys: Sequence[str]) -> list[str]:
        """The Mooncake object keys of ``keys``, page by page (K then V for MHA)."""
        return self._all_object_keys(keys)

    # ------------------------------------------------------------------ keys
    def _object_keys(self, key: str) -> list[str]:
        return [key + tail for tail in self._tails]

    @property
    def _parts(self) -> int:
        return len(self._tails)

    # ------------------------------------------------------------------ memory registration
    def _register(self, tensor: torch.Tensor) -> None:
        ptr, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        rc = self._client.register_buffer(ptr, size)
        if rc != 0:
            raise HiCacheError(
                f"mooncake: register_buffer of {size} bytes failed ({codes.name_of(rc)}, {rc}); "
                "with rdma, check the device and the locked-memory limit (ulimit -l)"
            )
        self._registered.append(ptr)

    def _unregister(self, ptr: int) -> None:
        try:
            self._client.unregister_buffer(ptr)
        except Exception:
            log.debug("unregister_buffer failed", exc_info=True)
        if ptr in self._registered:
            self._registered.remove(ptr)

    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        mem_pool_host.require_page_layout("mooncake")
        if bool(mem_pool_host.is_mla) != self._is_mla:
            raise LayoutError(
                f"mooncake: the host pool is {'MLA' if mem_pool_host.is_mla else 'MHA'} but the storage "
                f"config says is_mla_model={self._is_mla}; they must agree (it decides the key layout)"
            )
        if self.mem_pool_host is not None:
            if self.mem_pool_host is mem_pool_host:
                return
            self._unregister(self.mem_pool_host.kv_buffer.data_ptr())
        self._register(mem_pool_host.kv_buffer)
        super().register_mem_pool_host(mem_pool_host)

    # ------------------------------------------------------------------ guarded calls
    def _master_gate(self) -> bool:
        """False (fail fast) while the master is known down and its port is still closed."""
        if not self._master_down:
            return True
        with self._master_lock:
            now = time.monotonic()
            if now - self._master_checked_at < MASTER_CHECK_INTERVAL_S:
                return not self._master_down
            self._master_checked_at = now
            if tcp_reachable(self.settings.master_server_address, timeout_s=0.2) is None:
                self._master_down = False
        return not self._master_down

    def _note_codes(self, rcs: Sequence[int]) -> None:
        if rcs and all(rc in codes.MASTER_DOWN for rc in rcs):
            with self._master_lock:
                if not self._master_down:
                    log.warning("mooncake: master %s unreachable; failing fast until it answers",
                                self.settings.master_server_address)
                self._master_down = True
                self._master_checked_at = time.monotonic()

    def _call(self, op: str, n: int, *args: Any) -> list[int]:
        """Run ``client.<op>(*args)`` returning one code per object; never raises.

        Failures before or around the call (closed, master down, exception, wrong answer
        length) become ``n`` copies of a failure code, counted once per object.
        """
        if self._closed:
            self._errors.add("closed", n, f"{op} after close()")
            return [codes.INTERNAL_ERROR - 10_000] * n
        if not self._master_gate():
            self._errors.add("master_unreachable", n, f"{op}: master port closed, not called")
            return [codes.RPC_FAIL - 10_000] * n
        try:
            out = getattr(self._client, op)(*args)
        except Exception as exc:
            log.warning("mooncake: %s raised %s: %s", op, type(exc).__name__, exc)
            self._errors.add("exception", n, f"{op}: {type(exc).__name__}: {exc}")
            return [codes.INTERNAL_ERROR - 10_000] * n
        rcs: list[int] = out if isinstance(out, list) else list(out) if isinstance(out, tuple) else [int(out)] * n
        if len(rcs) != n:
            self._errors.add("bad_reply", n, f"{op} answered {len(rcs)} codes for {n} keys")
            return [codes.INTERNAL_ERROR - 10_000] * n
        self._note_codes(rcs)
        return rcs

    # Codes made up above are offset by -10000 so they are counted once (already named) and
    # never mistaken for Mooncake's own.
    def _count_failures(self, rcs: Sequence[int], op: str, good: frozenset[int]) -> None:
        for rc in rcs:
            if rc not in good and rc > -10_000:
                self._errors.add_code(rc, 1, op)

    def _bump(self, **deltas: int) -> None:
        with self._counts_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    # ------------------------------------------------------------------ object-level batches
    def _put_objects(self, keys: list[str], ptrs: list[int], sizes: list[int]) -> list[bool]:
        """Per object: stored (or already there, which by content addressing is the same bytes)."""
        ok: list[bool] = []
        step = MAX_BATCH_PAGES * self._parts
        for i in range(0, len(keys), step):
            rcs = self._call("batch_put_from", len(keys[i : i + step]), keys[i : i + step], ptrs[i : i + step], sizes[i : i + step])
            if any(rcs):
                self._count_failures(rcs, "batch_put_from", _OK)
            ok.extend(rc == 0 for rc in rcs)
        return ok

    def _get_objects(self, keys: list[str], ptrs: list[int], sizes: list[int], count_misses: bool = True) -> list[bool]:
        """Per object: exactly ``size`` bytes were read into ``ptr``."""
        ok: list[bool] = []
        step = MAX_BATCH_PAGES * self._parts
        for i in range(0, len(keys), step):
            chunk_sizes = sizes[i : i + step]
            rcs = self._call("batch_get_into", len(chunk_sizes), keys[i : i + step], ptrs[i : i + step], chunk_sizes)
            good = [rc == size for rc, size in zip(rcs, chunk_sizes)]
            ok.extend(good)
            if all(good):
                continue
            for rc, size in zip(rcs, chunk_sizes):
                if rc == size or rc <= -10_000 or (rc == codes.OBJECT_NOT_FOUND and not count_misses):
                    continue
                if rc >= 0:  # stored under this key with another page geometry
                    self._errors.add("size_mismatch", 1, f"read {rc} bytes, the page piece has {size}")
                else:
                    self._errors.add_code(rc, 1, "batch_get_into")
        return ok

    def _exist_objects(self, keys: list[str]) -> list[bool]:
        ok: list[bool] = []
        step = MAX_BATCH_PAGES * self._parts
        for i in range(0, len(keys), step):
            rcs = self._call("batch_is_exist", len(keys[i : i + step]), keys[i : i + step])
            if min(rcs, default=0) < 0:
                self._count_failures(rcs, "batch_is_exist", _EXIST_ANSWERS)
            ok.extend(rc == 1 for rc in rcs)
        return ok

    def _per_page(self, per_object: list[bool]) -> list[bool]:
        if self._parts == 1:
            return per_object
        return [k and v for k, v in zip(per_object[0::2], per_object[1::2])]

    def _all_object_keys(self, keys: Sequence[str]) -> list[str]:
        tails = self._tails
        return [k + t for k in keys for t in tails]

    # ------------------------------------------------------------------ zero-copy v1
    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        if not self.config.is_writer_rank:
            # MLA: every rank holds the same KV and rank 0 writes it; the others succeed idly.
            self._bump(pages_skipped_non_writer=len(keys))
            return [True] * len(keys)
        ptrs, sizes = self.piece_addresses(pool, host_indices)
        result = self._per_page(self._put_objects(self._all_object_keys(keys), ptrs, sizes))
        good = sum(result)
        self._bump(pages_written=good, pages_write_failed=len(keys) - good, bytes_written=good * pool.page_bytes)
        return result

    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        ptrs, sizes = self.piece_addresses(pool, host_indices)
        result = self._per_page(self._get_objects(self._all_object_keys(keys), ptrs, sizes, count_misses=False))
        good = sum(result)
        self._bump(pages_read=good, pages_read_failed=len(keys) - good, bytes_read=good * pool.page_bytes)
        return result

    def piece_addresses(self, pool: HostKVPool, host_indices: torch.Tensor) -> tuple[list[int], list[int]]:
        """``pool.get_page_buffer_meta(host_indices)``, computed in a few tensor operations.

        In both page layouts page ``p``'s K piece starts ``p * piece`` bytes into the buffer
        and its V piece half a buffer later; building per-page Python objects instead costs
        about 2 us a page, which at RDMA speeds is a large share of a 128-page batch. Indices
        are checked to be page aligned and inside the pool, because Mooncake would otherwise
        move bytes to or from memory outside it.
        """
        page_size = pool.page_size
        idx = torch.as_tensor(host_indices, dtype=torch.int64).view(-1)
        firsts = idx[::page_size]
        pages = firsts // page_size
        if bool((firsts % page_size).any()) or (pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= pool.page_num)):
            raise ValueError(f"mooncake: host indices must be page aligned and inside the pool ({pool.page_num} pages)")
        piece = pool.page_bytes // self._parts
        k = pages * piece + pool.kv_buffer.data_ptr()
        if self._parts == 1:
            ptrs: list[int] = k.tolist()
        else:
            v_half = pool.kv_buffer.numel() * pool.itemsize // 2
            ptrs = torch.stack((k, k + v_half), dim=1).view(-1).tolist()
        return ptrs, [piece] * len(ptrs)

    # ------------------------------------------------------------------ existence
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        if not keys:
            return []
        objs = self._all_object_keys(keys)
        if len(objs) > MAX_BATCH_PAGES * self._parts:
            return self._per_page(self._exist_objects(objs))
        # One call (the common case), with the per-page fold inlined: this is the hot path of
        # every prefetch decision.
        rcs = self._call("batch_is_exist", len(objs), objs)
        if min(rcs) < 0:
            self._count_failures(rcs, "batch_is_exist", _EXIST_ANSWERS)
        if self._parts == 1:
            return [rc == 1 for rc in rcs]
        return [k == 1 and v == 1 for k, v in zip(rcs[0::2], rcs[1::2])]

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        """Leading pages present; asks Mooncake 128 pages at a time and stops at the first gap."""
        hits = 0
        for start in range(0, len(keys), MAX_BATCH_PAGES):
            chunk = keys[start : start + MAX_BATCH_PAGES]
            for present in self.exists_many(chunk, extra_info):
                if not present:
                    return hits
                hits += 1
        return hits

    def exists(self, key: str) -> bool:
        return self.exists_many([key])[0]

    # ------------------------------------------------------------------ legacy get/set (staging)
    def _staging_view(self, nbytes: int) -> torch.Tensor:
        """A registered byte buffer of at least ``nbytes``; call with ``_staging_lock`` held."""
        if self._staging is None or self._staging.numel() < nbytes:
            if self._staging is not None:
                self._unregister(self._staging.data_ptr())
            size = max(nbytes, 1 << 20)
            self._staging = torch.empty(size, dtype=torch.uint8)
            self._register(self._staging)
        return self._staging[:nbytes]

    @staticmethod
    def _as_bytes(value: Any, size: Any = None) -> torch.Tensor | None:
        """A flat uint8 view of a page given as a tensor, or as an address (SGLang passes ints)."""
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu":
                return None
            return value.contiguous().view(-1).view(torch.uint8)
        if isinstance(value, int) and isinstance(size, int) and size > 0:
            raw = (ctypes.c_uint8 * size).from_address(value)
            return torch.frombuffer(raw, dtype=torch.uint8)
        return None

    def _piece_sizes(self, nbytes: int) -> list[int] | None:
        if self._is_mla:
            return [nbytes]
        if nbytes % 2:
            return None
        return [nbytes // 2, nbytes // 2]

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        if not keys:
            return True
        if not self.config.is_writer_rank:
            self._bump(pages_skipped_non_writer=len(keys))
            return True
        vals = list(values) if values is not None else list(target_locations or [None] * len(keys))
        sizes_in = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        pages: list[tuple[str, torch.Tensor]] = []
        ok = True
        for key, val, size in zip(keys, vals, sizes_in):
            flat = self._as_bytes(val, size)
            if flat is None or self._piece_sizes(flat.numel()) is None:
                self._errors.add("bad_value", 1, f"set({key!r}): not a CPU tensor or address+size")
                ok = False
                continue
            pages.append((key, flat))
        if len(pages) < len(keys):
            self._bump(pages_write_failed=len(keys) - len(pages))
        if not pages:
            return False
        with self._staging_lock:
            staging = self._staging_view(sum(f.numel() for _, f in pages))
            obj_keys, ptrs, sizes = [], [], []
            offset = 0
            for key, flat in pages:
                staging[offset : offset + flat.numel()].copy_(flat)
                for obj, piece in zip(self._object_keys(key), self._piece_sizes(flat.numel()) or []):
                    obj_keys.append(obj)
                    ptrs.append(staging.data_ptr() + offset)
                    sizes.append(piece)
                    offset += piece
            result = self._per_page(self._put_objects(obj_keys, ptrs, sizes))
        good = sum(result)
        self._bump(pages_written=good, pages_write_failed=len(pages) - good,
                   bytes_written=sum(f.numel() for (_, f), r in zip(pages, result) if r))
        return ok and all(result)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location], None,
                              [target_sizes] if target_sizes is not None else None)

    def _page_nbytes(self, key: str) -> int | None:
        """Bytes of the page stored under ``key`` (pool geometry, else asked of Mooncake)."""
        if self.mem_pool_host is not None:
            return int(self.mem_pool_host.page_bytes)
        total = 0
        for obj in self._object_keys(key):
            if self._closed or not self._master_gate():
                return None
            try:
                size = int(self._client.get_size(obj))
            except Exception:
                return None
            if size < 0:
                if size != codes.OBJECT_NOT_FOUND:
                    self._errors.add_code(size, 1, "get_size")
                return None
            total += size
        return total

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        if not keys:
            return []
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes_in = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        plan: list[tuple[int, torch.Tensor | None, int]] = []  # (index, destination bytes, nbytes)
        for i, (key, loc, size) in enumerate(zip(keys, locs, sizes_in)):
            dest = self._as_bytes(loc, size) if loc is not None else None
            nbytes = dest.numel() if dest is not None else self._page_nbytes(key)
            if nbytes and self._piece_sizes(nbytes) is not None:
                plan.append((i, dest, nbytes))
        out: list[torch.Tensor | None] = [None] * len(keys)
        if plan:
            with self._staging_lock:
                staging = self._staging_view(sum(n for _, _, n in plan))
                obj_keys, ptrs, sizes, offsets = [], [], [], []
                offset = 0
                for i, _dest, nbytes in plan:
                    offsets.append(offset)
                    for obj, piece in zip(self._object_keys(keys[i]), self._piece_sizes(nbytes) or []):
                        obj_keys.append(obj)
                        ptrs.append(staging.data_ptr() + offset)
                        sizes.append(piece)
                        offset += piece
                result = self._per_page(self._get_objects(obj_keys, ptrs, sizes, count_misses=False))
                for (i, dest, nbytes), start, page_ok in zip(plan, offsets, result):
                    if not page_ok:
                        continue
                    data = staging[start : start + nbytes]
                    if dest is not None:
                        dest.copy_(data)
                        loc = locs[i]
                        out[i] = loc if isinstance(loc, torch.Tensor) else dest
                    else:
                        out[i] = self._typed(data.clone())
        hits = sum(t is not None for t in out)
        nbytes_read = sum(n for i, _, n in plan if out[i] is not None)
        self._bump(pages_read=hits, pages_read_failed=len(keys) - hits, bytes_read=nbytes_read)
        return out

    def _typed(self, raw: torch.Tensor) -> torch.Tensor:
        pool = self.mem_pool_host
        if pool is not None and raw.numel() % pool.itemsize == 0:
            return raw.view(pool.dtype)
        return raw

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location] if target_location is not None else None,
                              [target_sizes] if target_sizes is not None else None)[0]

    # ------------------------------------------------------------------ admin
    def delete(self, key: str) -> bool:
        """Remove a page's objects; True when none is left (absent counts as removed).

        Not forced: an object under a read lease (-706, a reader is transferring it) stays,
        and delete answers False; forcing would let the reader copy freed memory.
        """
        objs = self._object_keys(key)
        rcs = self._call("batch_remove", len(objs), objs)
        self._count_failures(rcs, "batch_remove", _REMOVED)
        return all(rc in (0, codes.OBJECT_NOT_FOUND) for rc in rcs)

    def clear(self) -> None:
        """Remove every object in the cluster that has no read lease (shared: all nodes' pages)."""
        (rc,) = self._call("remove_all", 1)
        if rc < 0:
            raise HiCacheError(f"mooncake: remove_all failed ({codes.name_of(rc)}, {rc})")
        log.info("mooncake: clear removed %d objects", rc)

    def health_check(self) -> None:
        """Raise unless the master answers and a tiny object round-trips through the cluster.

        Mooncake's own ``health_check()`` keeps answering 0 after the master is killed, so
        this makes real calls: a TCP connect to the master, ``batch_is_exist`` on a probe key
        and a put + get of a 64-byte probe object (it finds dead storage nodes). A pool too full
        for the probe still counts as healthy: it serves reads and evicts by itself.
        """
        if self._closed:
            raise HiCacheError("mooncake: backend is closed")
        why = tcp_reachable(self.settings.master_server_address, timeout_s=1.0)
        if why:
            raise HiCacheError(f"mooncake: master {self.settings.master_server_address} unreachable: {why}")
        with self._master_lock:
            self._master_down, self._master_checked_at = False, time.monotonic()
        with self._probe_lock:
            self._probe()

    def _probe(self) -> None:
        rcs = self._call("batch_is_exist", 1, [self._probe_key])
        if rcs[0] not in (0, 1):
            raise HiCacheError(f"mooncake: batch_is_exist probe failed ({codes.name_of(rcs[0])}, {rcs[0]})")
        buf = self._probe_buf
        pattern = torch.arange(64, dtype=torch.uint8)
        if rcs[0] == 0:
            buf.copy_(pattern)
            (rc,) = self._call("batch_put_from", 1, [self._probe_key], [buf.data_ptr()], [64])
            if rc == codes.NO_AVAILABLE_HANDLE:
                # A full pool still serves reads and evicts on its own: not a reason to detach.
                return
            if rc != 0:
                raise HiCacheError(f"mooncake: probe put failed ({codes.name_of(rc)}, {rc})")
        buf.zero_()
        (rc,) = self._call("batch_get_into", 1, [self._probe_key], [buf.data_ptr()], [64])
        if rc != 64 or not torch.equal(buf, pattern):
            raise HiCacheError(f"mooncake: probe read failed ({codes.name_of(rc) if rc < 0 else f'{rc} bytes'})")

    def get_stats(self) -> dict[str, Any]:
        with self._counts_lock:
            stats: dict[str, Any] = dict(self._counts)
        stats["errors"] = self._errors.snapshot()
        stats["errors_total"] = self._errors.total()
        stats["last_error"] = self._errors.last
        stats["master"] = self.settings.master_server_address
        stats["master_down"] = self._master_down
        stats["protocol"] = self.settings.protocol
        return stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ptr in list(self._registered):
            self._unregister(ptr)
        try:
            self._client.close()
        except Exception:
            log.debug("mooncake client close failed", exc_info=True)

    def __repr__(self) -> str:
        return f"MooncakeStore({self.settings.describe()}, suffix={self._suffix!r})"
