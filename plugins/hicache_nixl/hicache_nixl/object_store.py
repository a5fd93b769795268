"""The object flavour: NIXL's OBJ plugin (S3), one object per page, named by its key.

Each batch registers its objects as OBJ segments (object name in the descriptor's metadata,
a fresh device id per object) and runs one request. Reads ask which objects exist (a HEAD each,
through the plugin's ``query_memory``), then run ranged GETs straight into the host pool,
one per contiguous piece of a page. NIXL's OBJ plugin writes whole objects only
(a write at a non-zero offset fails), so a page that is a single piece in host memory (MLA,
or any tensor) is written from the pool directly, and a page of several pieces (K and V) is
first gathered into a registered staging buffer.

``exists`` asks the plugin's ``query_memory`` (a HEAD per object), never reading data.
NIXL has no object delete, so this flavour declares neither ``delete`` nor ``clear``.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.errors import HiCacheError
from hicache_nixl.store import NixlStore, Piece, page_length
from hicache_nixl.transfer import Outcome

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.spec.config import HiCacheStorageConfig

log = logging.getLogger(__name__)

_PROBE_OBJECT = "__hicache_nixl_health_probe__"
Rows = list[tuple[int, int, int]]


class NixlObjectStore(NixlStore):
    """Pages as S3 objects in ``bucket``, moved by NIXL's OBJ plugin."""

    flavour = "obj"
    capabilities = Capabilities(
        zero_copy_v1=True, delete=False, clear=False, persistent=True, shared=True,
        requires_page_layout=False, mla=True,
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._dev_ids = itertools.count(1)
        self._staging: torch.Tensor | None = None
        self._staging_reg: Any = None
        self._staging_lock = threading.Lock()

    def _name(self, skey: str) -> str:
        return f"{self.settings.object_prefix}{skey}"

    # ------------------------------------------------------------------ pool and staging
    def _on_pool(self, pool: HostKVPool) -> None:
        self._drop_staging()
        if pool.pieces_per_page() > 1:
            self._staging = torch.empty(self.settings.staging_pages * pool.page_bytes, dtype=torch.uint8)
            self._staging_reg = self.agent.register_memory(self._staging, backends=[self.backend_name])

    def _drop_staging(self) -> None:
        if self._staging_reg is not None:
            try:
                self.agent.deregister_memory(self._staging_reg, backends=[self.backend_name])
            except Exception as exc:
                log.warning("nixl: deregistering the staging buffer failed: %s", exc)
        self._staging, self._staging_reg = None, None

    def close(self) -> None:
        if not self._closed:
            self._drop_staging()
        super().close()

    # ------------------------------------------------------------------ existence
    def _query(self, skeys: list[str]) -> list[bool] | None:
        try:
            answers = self.agent.query_memory([(0, 0, 0, self._name(k)) for k in skeys], self.backend_name, "OBJ")
        except Exception as exc:
            log.warning("nixl: querying %d objects failed: %s", len(skeys), exc)
            self.counters.add("query_errors")
            return None
        return [a is not None for a in answers]

    def _exists(self, skeys: list[str], stop_at_miss: bool = False) -> list[bool]:
        found = self._query(skeys)
        return found if found is not None else [False] * len(skeys)

    def _stored_size(self, skey: str) -> int | None:
        return None  # the plugin's query answers existence only

    # ------------------------------------------------------------------ I/O
    def _register_objects(self, objects: list[tuple[str, int]]) -> tuple[Any, list[int]]:
        ids = [next(self._dev_ids) & 0x7FFFFFFF for _ in objects]
        reg = self.agent.register_memory(
            [(0, length, dev, self._name(skey)) for (skey, length), dev in zip(objects, ids)], "OBJ",
            backends=[self.backend_name],
        )
        return reg, ids

    def _deregister(self, reg: Any) -> None:
        try:
            self.agent.deregister_memory(reg, backends=[self.backend_name])
        except Exception as exc:
            log.warning("nixl: deregistering objects failed: %s", exc)

    def _transfer(self, op: str, skeys: list[str], rows: list[tuple[Rows, Rows]], lengths: list[int]) -> list[Outcome]:
        """Register the objects, run ``op`` page by page's rows (device id filled in), deregister."""
        try:
            reg, ids = self._register_objects(list(zip(skeys, lengths)))
        except Exception as exc:
            log.warning("nixl: registering %d objects failed: %s", len(skeys), exc)
            return [Outcome.FAILED] * len(skeys)
        try:
            with_ids = [(local, [(off, n, dev) for off, n, _ in remote]) for (local, remote), dev in zip(rows, ids)]
            return self._run_pages(op, with_ids)
        finally:
            self._deregister(reg)

    def _read(self, skeys: list[str], pieces: list[list[Piece]], pooled: bool) -> list[bool]:
        n = len(skeys)
        self.counters.add("get_pages", n)
        results = [False] * n
        # A GET of an absent object fails, and the AWS SDK may already have written its
        # error body into the destination; ask first so a miss leaves the page untouched.
        present = self._query(skeys)
        if present is None:
            self.counters.add("failed_pages", n)
            return results
        wanted = [i for i in range(n) if present[i]]
        self.counters.add("misses", n - len(wanted))
        if not wanted:
            return results
        outcomes = self._transfer("READ", [skeys[i] for i in wanted], [_rows(pieces[i]) for i in wanted],
                                  [page_length(pieces[i]) for i in wanted])
        self._count_outcomes(outcomes)
        for i, outcome in zip(wanted, outcomes):
            if outcome is Outcome.DONE:
                results[i] = True
                self.counters.add("hits")
                self.counters.add("bytes_read", page_length(pieces[i]))
        return results

    def _write(self, skeys: list[str], pieces: list[list[Piece]], pooled: bool) -> list[bool]:
        self.counters.add("set_pages", len(skeys))
        results = [False] * len(skeys)
        single = [i for i, p in enumerate(pieces) if len(p) == 1]
        multi = [i for i, p in enumerate(pieces) if len(p) > 1]
        if single:
            outcomes = self._transfer("WRITE", [skeys[i] for i in single], [_rows(pieces[i]) for i in single],
                                      [page_length(pieces[i]) for i in single])
            self._settle(single, outcomes, pieces, results)
        if multi:
            self._write_gathered(skeys, pieces, multi, results)
        self.counters.add("stored", sum(results))
        return results

    def _write_gathered(self, skeys: list[str], pieces: list[list[Piece]], pages: list[int], results: list[bool]) -> None:
        """Gather multi-piece pages into the staging buffer, a chunk at a time, and write them."""
        page_bytes = max(page_length(pieces[i]) for i in pages)
        staging = self._staging
        with self._staging_lock:
            if staging is None or page_bytes * self.settings.staging_pages > staging.numel():
                log.warning("nixl: no staging buffer for %d multi-piece pages; register the host pool first", len(pages))
                self.counters.add("failed_pages", len(pages))
                return
            base = staging.data_ptr()
            step = self.settings.staging_pages
            for start in range(0, len(pages), step):
                chunk = pages[start:start + step]
                rows: list[tuple[Rows, Rows]] = []
                for slot, i in enumerate(chunk):
                    dst = base + slot * page_bytes
                    offset = 0
                    for ptr, nbytes in pieces[i]:
                        ctypes.memmove(dst + offset, ptr, nbytes)
                        offset += nbytes
                    rows.append(([(dst, offset, 0)], [(0, offset, 0)]))
                outcomes = self._transfer("WRITE", [skeys[i] for i in chunk], rows,
                                          [page_length(pieces[i]) for i in chunk])
                self._settle(chunk, outcomes, pieces, results)

    def _settle(self, pages: list[int], outcomes: list[Outcome], pieces: list[list[Piece]], results: list[bool]) -> None:
        self._count_outcomes(outcomes)
        for i, outcome in zip(pages, outcomes):
            if outcome is Outcome.DONE:
                results[i] = True
                self.counters.add("bytes_written", page_length(pieces[i]))

    # ------------------------------------------------------------------ management
    def health_check(self) -> None:
        if self._query([_PROBE_OBJECT]) is None:
            raise HiCacheError(
                f"nixl: the S3 endpoint {self.settings.endpoint or '(AWS default)'} does not answer for bucket "
                f"{self.settings.bucket!r}"
            )

    def _flavour_stats(self) -> dict[str, Any]:
        return {"bucket": self.settings.bucket, "endpoint": self.settings.endpoint,
                "object_prefix": self.settings.object_prefix, "region": self.settings.region}


def _rows(pieces: list[Piece]) -> tuple[Rows, Rows]:
    """DRAM rows and OBJ rows (device id 0, filled in later) of one page's pieces."""
    local, remote, offset = [], [], 0
    for ptr, nbytes in pieces:
        local.append((ptr, nbytes, 0))
        remote.append((offset, nbytes, 0))
        offset += nbytes
    return local, remote
