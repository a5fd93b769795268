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
import hashlib
import itertools
import logging
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import torch

from hicache_core.memory.pages import page_geometry
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.errors import HiCacheError
from hicache_nixl.spans import PageSpans
from hicache_nixl.store import NixlStore
from hicache_nixl.transfer import Outcome

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.spec.config import HiCacheStorageConfig

log = logging.getLogger(__name__)

_PROBE_OBJECT = "__hicache_nixl_health_probe__"
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.@\-]+$")
#: S3 object keys stop at 1024 bytes; a longer (quoted) key becomes its SHA-256.
_MAX_KEY = 900


def object_key(skey: str) -> str:
    """The object name of a storage key: one name per key, never a path to normalise.

    Plain keys (hex hashes with the namespace tail) are used as they are. Others are
    percent-quoted, so S3 clients cannot fold ``a/../b`` into ``b`` or ``a//b`` into ``a/b``
    (two keys, one object); an over-long one becomes its SHA-256.
    """
    name = skey if _PLAIN_KEY.match(skey) else quote(skey, safe="")  # hex keys: no quoting cost
    return name if len(name) <= _MAX_KEY else "sha256-" + hashlib.sha256(skey.encode()).hexdigest()


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
        return f"{self.settings.object_prefix}{object_key(skey)}"

    # ------------------------------------------------------------------ pool and staging
    def _on_pool(self, pool: HostKVPool) -> None:
        self._drop_staging()
        geometry = self._geometry or page_geometry(pool)
        if geometry.pieces_per_page > 1:
            self._staging = torch.empty(self.settings.staging_pages * geometry.page_bytes, dtype=torch.uint8)
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
    def _transfer(self, op: str, skeys: list[str], spans: PageSpans) -> list[Outcome]:
        """Register the pages' objects (fresh device ids), run ``op``, deregister."""
        lengths = spans.lengths()
        ids = [next(self._dev_ids) & 0x7FFFFFFF for _ in skeys]
        try:
            reg = self.agent.register_memory(
                [(0, length, dev, self._name(skey)) for skey, length, dev in zip(skeys, lengths, ids)], "OBJ",
                backends=[self.backend_name],
            )
        except Exception as exc:
            log.warning("nixl: registering %d objects failed: %s", len(skeys), exc)
            return [Outcome.FAILED] * len(skeys)
        try:
            return self._run_pages(op, spans.local_rows(), spans.remote_rows(ids), spans.pieces)
        finally:
            try:
                self.agent.deregister_memory(reg, backends=[self.backend_name])
            except Exception as exc:
                log.warning("nixl: deregistering objects failed: %s", exc)

    def _read(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
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
        outcomes = self._transfer("READ", [skeys[i] for i in wanted], spans.take(wanted))
        self._settle(wanted, outcomes, spans.lengths(), results, "bytes_read")
        self.counters.add("hits", sum(results))
        return results

    def _write(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
        n = len(skeys)
        self.counters.add("set_pages", n)
        results = [False] * n
        if spans.pieces == 1:
            outcomes = self._transfer("WRITE", skeys, spans)
            self._settle(list(range(n)), outcomes, spans.lengths(), results, "bytes_written")
        else:
            self._write_gathered(skeys, spans, results)
        self.counters.add("stored", sum(results))
        return results

    def _write_gathered(self, skeys: list[str], spans: PageSpans, results: list[bool]) -> None:
        """Gather multi-piece pages into the staging buffer, a chunk at a time, and write them."""
        lengths = spans.lengths()
        page_bytes = max(lengths)
        staging = self._staging
        with self._staging_lock:
            if staging is None or page_bytes * self.settings.staging_pages > staging.numel():
                log.warning("nixl: no staging buffer for %d multi-piece pages; register the host pool first", len(skeys))
                self.counters.add("failed_pages", len(skeys))
                return
            base = staging.data_ptr()
            step = self.settings.staging_pages
            for start in range(0, len(skeys), step):
                chunk = list(range(start, min(start + step, len(skeys))))
                for slot, i in enumerate(chunk):
                    dst = base + slot * page_bytes
                    for ptr, nbytes in zip(spans.ptr[i].tolist(), spans.size[i].tolist()):
                        ctypes.memmove(dst, ptr, nbytes)
                        dst += nbytes
                gathered = PageSpans.contiguous([base + slot * page_bytes for slot in range(len(chunk))],
                                                [lengths[i] for i in chunk])
                outcomes = self._transfer("WRITE", [skeys[i] for i in chunk], gathered)
                self._settle(chunk, outcomes, lengths, results, "bytes_written")

    def _settle(self, pages: list[int], outcomes: list[Outcome], lengths: list[int], results: list[bool],
                counter: str) -> None:
        self._count_outcomes(outcomes)
        done = [i for i, outcome in zip(pages, outcomes) if outcome is Outcome.DONE]
        for i in done:
            results[i] = True
        self.counters.add(counter, sum(lengths[i] for i in done))

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
