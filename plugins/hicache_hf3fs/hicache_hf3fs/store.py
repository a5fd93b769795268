"""``Hf3fsStore``: hicache's 3FS backend, laid out as SGLang's 3FS deployments lay it out.

Each rank owns one large pre-sized file ``{file_path_prefix}.{rank}.bin`` (MLA: every rank
uses ``{file_path_prefix}.mla.0.bin`` and only rank 0 writes); page ``slot`` lives at byte
``slot * page_bytes``. A metadata service (in-process, or the shared HTTP service) maps keys to
slots (``slots.SlotPages``: allocate -> write -> confirm, look up -> read -> validate).

What a page's bytes are is the core's rule (``hicache_core.memory.pages``): the flat page, the
pool's pieces in stored-byte order, whichever path writes it (zero-copy v1 or the flat-tensor
``get``/``set``), in every layout. Keys are ``page_key(hash)``, in the registered pool's
namespace (model, page format, shard), so a page of an incompatible pool is a miss.

I/O goes through a ``PageIOClient``: 3FS's usrbio rings on a 3FS mount, or (only when the
config asks for it) plain ``preadv``/``pwritev``, straight into the host pool's pages. Which
one runs is in ``get_stats()["mode"]``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hicache_core.memory.pages import PageGeometry, page_geometry
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_hf3fs.client import Item, PageIOClient
from hicache_hf3fs.config import rank_file_path, resolve_settings
from hicache_hf3fs.metadata.base import MetadataUnavailable, PageMetadata
from hicache_hf3fs.mounts import hf3fs_mount_of
from hicache_hf3fs.selection import choose_client, metadata_namespace, usrbio_importable
from hicache_hf3fs.slots import Counters, SlotPages

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

BACKEND = "hf3fs"


class Hf3fsStore(HiCacheStorage):
    """Pages in pre-sized rank files on 3FS (or plain files, when asked), indexed by slot."""

    contract_version = "1.0"
    capabilities = Capabilities(
        zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=True,
        requires_page_layout=False, mla=True,
        # Rank files hold fixed page-size slots: v2 sidecar states (other sizes) are misses.
        sidecar_pools=False,
    )
    #: Extra-config keys the node's status may show (every other value is hidden).
    config_public_fields: ClassVar[tuple[str, ...]] = (
        "file_path_prefix", "file_size", "numjobs", "entries", "io_depth", "client_timeout", "client",
        "write_lease_seconds", "index_path",
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.settings = resolve_settings(cfg)
        self.file_path = rank_file_path(self.settings, cfg)
        self.is_writer = cfg.is_writer_rank
        self.mount = hf3fs_mount_of(self.file_path)
        #: The rank file's name at the metadata service (``namespace`` is the key namespace).
        self.metadata_namespace = metadata_namespace(self.file_path, self.mount)
        self.client_kind = choose_client(self.settings, self.file_path, self.mount, usrbio_importable())
        self.metadata = self._open_metadata()
        self.counters = Counters()
        self.slots = SlotPages(self.metadata, self.counters)
        self.io: PageIOClient | None = None
        self.page_bytes = 0
        self._geometry: PageGeometry | None = None
        self._pool_bytes: memoryview | None = None
        self._closed = False
        self._io_lock = threading.Lock()
        log.info(
            "hf3fs backend: %s, file %s, metadata %s", self.mode, self.file_path, self.metadata.kind
        )

    # ------------------------------------------------------------------ setup
    def _open_metadata(self) -> PageMetadata:
        s = self.settings
        if s.metadata_server_url:
            from hicache_hf3fs.metadata.remote import RemotePageMetadata

            remote = RemotePageMetadata(s.metadata_server_url, self.metadata_namespace, s.client_timeout)
            try:
                remote.health()
            except MetadataUnavailable as exc:
                remote.close()
                raise BackendConfigError(
                    f"{exc}; start it with `python -m hicache_hf3fs.metadata_server --port P` or fix "
                    "metadata_server_url"
                ) from exc
            return remote
        from hicache_hf3fs.metadata.local import LocalPageMetadata

        return LocalPageMetadata(self.file_path, s.index_path)

    @property
    def mode(self) -> str:
        if self.client_kind == "usrbio":
            return "usrbio on 3FS"
        return "plain-file on a 3FS FUSE mount" if self.mount is not None else "plain-file (not 3FS)"

    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        geometry = page_geometry(mem_pool_host)
        page_bytes = geometry.page_bytes
        num_pages = self.settings.file_size // page_bytes
        if num_pages < 1:
            raise BackendConfigError(
                f"hf3fs: file_size {self.settings.file_size} holds no page of {page_bytes} bytes; raise file_size"
            )
        with self._io_lock:
            if self.io is not None and page_bytes != self.page_bytes:
                raise BackendConfigError(
                    f"hf3fs: a host pool with {self.page_bytes}-byte pages is already registered; "
                    f"open a new backend for pages of {page_bytes} bytes"
                )
            self.metadata.initialize(num_pages, page_bytes, self.settings.write_lease_seconds)
            if self.io is None:
                self.io = self._open_client(page_bytes)
            self.page_bytes = page_bytes
            self._geometry = geometry
            # One byte view of the whole pool, sliced per page piece (the core's byte ranges):
            # zero-copy, without building a tensor view per piece on the hot path.
            self._pool_bytes = memoryview(mem_pool_host.kv_buffer.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        super().register_mem_pool_host(mem_pool_host)

    def _open_client(self, page_bytes: int) -> PageIOClient:
        s = self.settings
        if self.client_kind == "usrbio":
            from hicache_hf3fs.usrbio_client import UsrbioClient

            assert self.mount is not None
            return UsrbioClient(
                self.file_path, s.file_size, page_bytes, self.mount.mount_point, entries=s.entries,
                numjobs=s.numjobs, io_depth=s.io_depth, timeout=s.client_timeout,
            )
        from hicache_hf3fs.file_client import PlainFileClient

        return PlainFileClient(self.file_path, s.file_size, numjobs=s.numjobs, on_3fs_mount=self.mount is not None)

    # ------------------------------------------------------------------ keys and pages
    def _skeys(self, keys: Sequence[str]) -> list[str]:
        return [self.page_key(k) for k in keys]

    def _parents(self, keys: Sequence[str], extra_info: HiCacheStorageExtraInfo | None) -> list[str | None]:
        """Each page's prefix neighbour: the page before it in the batch, or the last prefix key."""
        prefix = extra_info.prefix_keys if extra_info is not None and extra_info.prefix_keys else None
        first = self.page_key(prefix[-1]) if prefix else None
        return [first, *(self.page_key(k) for k in keys[:-1])] if keys else []

    def _page_items(self, pages: Sequence[int]) -> list[Item]:
        """Writable views of each page's pieces in stored-byte order, straight into the pool."""
        mv, geometry = self._pool_bytes, self._geometry
        if mv is None or geometry is None:
            raise HiCacheError("hf3fs: no host pool registered; call register_mem_pool_host() first")
        return [[mv[a:b] for a, b in geometry.byte_ranges(page)] for page in pages]

    @staticmethod
    def _bytes_view(t: torch.Tensor) -> memoryview:
        return memoryview(t.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]

    def _read(self, keys: Sequence[str], targets: Sequence[Item]) -> list[bool]:
        return self.slots.read(self.io, self.page_bytes, self._skeys(keys), targets)

    def _write(self, keys: Sequence[str], sources: Sequence[Item], parents: Sequence[str | None]) -> list[bool]:
        if not self.is_writer:
            # MLA: every rank holds the same KV, rank 0 stores it for all.
            self.counters.add(write_skipped_non_writer=len(keys))
            return [True] * len(keys)
        return self.slots.write(self.io, self.page_bytes, self._skeys(keys), sources, parents)

    # ------------------------------------------------------------------ single-key and legacy batch
    def _target_view(self, target: Any) -> tuple[torch.Tensor, memoryview] | None:
        pb = self.page_bytes
        if isinstance(target, torch.Tensor) and target.is_contiguous() and target.numel() * target.element_size() == pb:
            return target, self._bytes_view(target)
        if target is not None or self.mem_pool_host is None:
            return None
        page = torch.empty(pb // self.mem_pool_host.kv_buffer.element_size(), dtype=self.mem_pool_host.kv_buffer.dtype)
        return page, self._bytes_view(page)

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        views = [self._target_view(t) for t in locs]
        ok_idx = [i for i, v in enumerate(views) if v is not None]
        got = self._read([keys[i] for i in ok_idx], [[views[i][1]] for i in ok_idx])  # type: ignore[index]
        out: list[torch.Tensor | None] = [None] * len(keys)
        for i, ok in zip(ok_idx, got):
            if ok:
                out[i] = views[i][0]  # type: ignore[index]
        return out

    def _source_view(self, value: Any) -> memoryview | None:
        if not isinstance(value, torch.Tensor) or value.numel() * value.element_size() != self.page_bytes:
            return None
        return self._bytes_view(value.detach().cpu().contiguous())

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
        target_sizes: Any | None = None,
    ) -> bool:
        vals = list(values) if values is not None else [None] * len(keys)
        views = [self._source_view(v) for v in vals]
        if any(v is None for v in views):
            log.warning("hf3fs: batch_set got values that are not %d-byte pages", self.page_bytes)
            return False
        return all(self._write(keys, [[v] for v in views if v is not None], self._parents(keys, None)))

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        return self._read(keys, self._page_items(pool.indices_to_pages(host_indices)))

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        items = self._page_items(pool.indices_to_pages(host_indices))
        return self._write(keys, items, self._parents(keys, extra_info))

    # ------------------------------------------------------------------ existence and removal
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        try:
            return self.metadata.exists(self._skeys(keys))
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self.counters.add(metadata_errors=1)
            return [False] * len(keys)

    def exists(self, key: str) -> bool:
        return self.exists_many([key])[0]

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        for i, hit in enumerate(self.exists_many(keys, extra_info)):
            if not hit:
                return i
        return len(keys)

    def delete(self, key: str) -> bool:
        try:
            self.metadata.delete(self._skeys([key]))
            return True
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self.counters.add(metadata_errors=1)
            return False

    def clear(self) -> None:
        self.metadata.clear()

    # ------------------------------------------------------------------ status and lifecycle
    def get_stats(self) -> dict[str, Any]:
        io = self.io
        return {
            "backend": BACKEND,
            "mode": self.mode,
            "on_3fs": io.on_3fs if io is not None else self.mount is not None,
            "client": io.describe() if io is not None else {"client": self.client_kind, "opened": False},
            "file_path": self.file_path,
            "writer_rank": self.is_writer,
            "namespace": self.namespace,
            "metadata": self.metadata.stats(),
            **self.counters.snapshot(),
        }

    def health_check(self) -> None:
        if self._closed:
            raise HiCacheError("hf3fs backend is closed")
        self.metadata.health()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        io, self.io = self.io, None
        try:
            if io is not None:
                io.flush()  # page bytes are durable before the index that points at them is saved
                io.close()
        finally:
            self.metadata.close()
