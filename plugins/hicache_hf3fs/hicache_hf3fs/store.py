"""``Hf3fsStore``: hicache's 3FS backend, laid out as SGLang's 3FS deployments lay it out.

Each rank owns one large pre-sized file ``{file_path_prefix}.{rank}.bin`` (MLA: every rank
uses ``{file_path_prefix}.mla.0.bin`` and only rank 0 writes); page ``slot`` lives at byte ``slot * page_bytes``.
A metadata service (in-process, or the shared HTTP service) maps keys to slots. Writes go:
allocate a slot -> write the bytes -> confirm (only then is the page visible). Reads go:
look up (key, slot, generation) -> read -> validate (the slot was not reallocated meanwhile).

I/O goes through a ``PageIOClient``: 3FS's usrbio rings on a 3FS mount, or (only when the
config asks for it) plain ``preadv``/``pwritev``, straight into the host pool's pages. Which
one runs is in ``get_stats()["mode"]``.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_hf3fs.client import Item, PageIOClient
from hicache_hf3fs.config import Hf3fsSettings, rank_file_path, resolve_settings
from hicache_hf3fs.metadata.base import MetadataUnavailable, PageMetadata
from hicache_hf3fs.metadata.index import EXISTS, FULL, NEW, SlotRef
from hicache_hf3fs.mounts import Mount, hf3fs_mount_of, mount_of

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

BACKEND = "hf3fs"


def usrbio_importable() -> bool:
    """Whether 3FS's Python client can be found (without importing it)."""
    try:
        return importlib.util.find_spec("hf3fs_fuse") is not None
    except (ImportError, ValueError):
        return False


def choose_client(settings: Hf3fsSettings, path: str, mount: Mount | None, usrbio: bool) -> str:
    """``usrbio`` or ``file`` for ``path``; BackendConfigError when the config does not allow either."""
    where = mount_of(path)
    fs = f"{where.fstype} at {where.mount_point}" if where is not None else "an unknown file system"
    if settings.client == "usrbio":
        if mount is None:
            raise BackendConfigError(
                f"hf3fs: client is 'usrbio' but {path} is not on a 3FS mount (it is on {fs}); "
                "point file_path_prefix at a 3FS mount, or set client: \"file\""
            )
        if not usrbio:
            raise BackendConfigError(
                "hf3fs: client is 'usrbio' but hf3fs_fuse is not importable; build and install 3FS's "
                "Python client (hf3fs_py_usrbio) or set client: \"file\""
            )
        return "usrbio"
    if settings.client == "file":
        return "file"
    if mount is not None and usrbio:
        return "usrbio"
    if settings.allow_non_3fs:
        return "file"
    if mount is not None:
        raise BackendConfigError(
            f"hf3fs: {path} is on the 3FS mount {mount.mount_point} but hf3fs_fuse (the usrbio client) is "
            "not importable; install 3FS's Python client, or set client: \"file\" to use plain reads "
            "through the FUSE mount"
        )
    raise BackendConfigError(
        f"hf3fs: {path} is not on a 3FS mount (it is on {fs}); point file_path_prefix at a 3FS mount, "
        "or opt in to plain files with client: \"file\" or allow_non_3fs: true (reported as not-3FS)"
    )


def metadata_namespace(path: str, mount: Mount | None) -> str:
    """The name under which the shared service indexes a rank file.

    On 3FS: the path inside the mount (``3fs:/kv/hicache.0.bin``), the same on every node
    whatever its mount point. Elsewhere: the absolute real path, shared only on one machine.
    """
    real = os.path.realpath(os.path.abspath(path))
    if mount is not None:
        inside = os.path.relpath(real, os.path.realpath(mount.mount_point))
        return "3fs:/" + inside
    return real


class Hf3fsStore(HiCacheStorage):
    """Pages in pre-sized rank files on 3FS (or plain files, when asked), indexed by slot."""

    contract_version = "1.0"
    capabilities = Capabilities(
        zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=True,
        requires_page_layout=True, mla=True,
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.settings = resolve_settings(cfg)
        self.file_path = rank_file_path(self.settings, cfg)
        self.suffix = cfg.namespace_suffix()
        self.is_writer = cfg.is_writer_rank
        self.mount = hf3fs_mount_of(self.file_path)
        self.namespace = metadata_namespace(self.file_path, self.mount)
        self.client_kind = choose_client(self.settings, self.file_path, self.mount, usrbio_importable())
        self.metadata = self._open_metadata()
        self.io: PageIOClient | None = None
        self.page_bytes = 0
        self._pool_bytes: memoryview | None = None
        self._pool_base = 0
        self._closed = False
        self._io_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys((
            "read_pages", "read_hits", "read_misses", "read_io_errors", "read_stale", "bytes_read",
            "write_pages", "write_stored", "write_already_stored", "write_no_space", "write_io_errors",
            "write_lost_lease", "write_skipped_non_writer", "bytes_written", "metadata_errors",
        ), 0)
        log.info(
            "hf3fs backend: %s, file %s, metadata %s", self.mode, self.file_path, self.metadata.kind
        )

    # ------------------------------------------------------------------ setup
    def _open_metadata(self) -> PageMetadata:
        s = self.settings
        if s.metadata_server_url:
            from hicache_hf3fs.metadata.remote import RemotePageMetadata

            remote = RemotePageMetadata(s.metadata_server_url, self.namespace, s.client_timeout)
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
        mem_pool_host.require_page_layout(BACKEND)
        page_bytes = int(mem_pool_host.page_bytes)
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
            # One byte view of the whole pool, sliced per page piece: zero-copy like
            # pool.page_memoryviews, without building a tensor view per piece on the hot path.
            self._pool_bytes = memoryview(mem_pool_host.kv_buffer.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
            self._pool_base = int(mem_pool_host.kv_buffer.data_ptr())
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

    # ------------------------------------------------------------------ helpers
    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    def _key(self, key: str) -> str:
        return key + self.suffix

    def _parents(self, keys: Sequence[str], extra_info: HiCacheStorageExtraInfo | None) -> list[str | None]:
        """Each page's prefix neighbour: the page before it in the batch, or the last prefix key."""
        prefix = extra_info.prefix_keys if extra_info is not None and extra_info.prefix_keys else None
        first = self._key(prefix[-1]) if prefix else None
        return [first, *(self._key(k) for k in keys[:-1])] if keys else []

    def _pool(self) -> HostKVPool:
        pool = self.mem_pool_host
        if pool is None:
            raise HiCacheError("hf3fs: no host pool registered; call register_mem_pool_host() first")
        return pool

    def _page_items(self, pool: HostKVPool, pages: Sequence[int]) -> list[Item]:
        """Writable views of each page's contiguous pieces (K then V), straight into the pool."""
        mv, base = self._pool_bytes, self._pool_base
        if mv is None:
            return [pool.page_memoryviews(p) for p in pages]
        items: list[Item] = []
        for page in pages:
            items.append([mv[pc.ptr - base : pc.ptr - base + pc.nbytes] for pc in pool.page_pieces(page)])
        return items

    @staticmethod
    def _bytes_view(t: torch.Tensor) -> memoryview:
        return memoryview(t.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the two I/O paths
    def _read_pages(self, keys: Sequence[str], targets: Sequence[Item]) -> list[bool]:
        n = len(keys)
        out = [False] * n
        io = self.io
        if io is None or n == 0:
            return out
        pb = self.page_bytes
        try:
            refs = self.metadata.lookup([self._key(k) for k in keys])
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self._count(read_pages=n, metadata_errors=1)
            return out
        hits = [i for i, r in enumerate(refs) if r is not None]
        results = io.batch_read([refs[i].slot * pb for i in hits], [targets[i] for i in hits])  # type: ignore[union-attr]
        done = [i for i, r in zip(hits, results) if r == pb]
        io_errors = len(hits) - len(done)
        if io_errors:
            log.warning("hf3fs: %d of %d page reads failed: %s", io_errors, len(hits),
                        sorted({r for r in results if r != pb})[:4])
        try:
            valid = self.metadata.validate([refs[i] for i in done])  # type: ignore[misc]
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self._count(read_pages=n, metadata_errors=1, read_io_errors=io_errors)
            return out
        stale = 0
        for i, ok in zip(done, valid):
            out[i] = ok
            stale += not ok
        hit_count = sum(out)
        self._count(
            read_pages=n, read_hits=hit_count, read_misses=n - len(hits), read_io_errors=io_errors,
            read_stale=stale, bytes_read=hit_count * pb,
        )
        return out

    def _write_pages(
        self, keys: Sequence[str], sources: Sequence[Item], parents: Sequence[str | None]
    ) -> list[bool]:
        n = len(keys)
        if not self.is_writer:
            # MLA: every rank holds the same KV, rank 0 stores it for all.
            self._count(write_skipped_non_writer=n)
            return [True] * n
        out = [False] * n
        io = self.io
        if io is None or n == 0:
            return out
        pb = self.page_bytes
        skeys = [self._key(k) for k in keys]
        try:
            allocs = self.metadata.allocate(skeys, parents)
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self._count(write_pages=n, metadata_errors=1)
            return out
        new = [i for i, a in enumerate(allocs) if a.status == NEW]
        for i, a in enumerate(allocs):
            if a.status == EXISTS:
                out[i] = True  # a whole page is stored under the key already
        results = io.batch_write([allocs[i].slot * pb for i in new], [sources[i] for i in new])
        written = [SlotRef(skeys[i], allocs[i].slot, allocs[i].gen) for i, r in zip(new, results) if r == pb]
        wrote = [i for i, r in zip(new, results) if r == pb]
        # A timed-out write may still land later: its slot stays "being written" until the
        # lease runs out instead of going back to the free list under another page's data.
        aborted = [
            SlotRef(skeys[i], allocs[i].slot, allocs[i].gen)
            for i, r in zip(new, results) if r != pb and r != -errno.ETIMEDOUT
        ]
        timed_out = sum(r == -errno.ETIMEDOUT for r in results)
        if aborted or timed_out:
            log.warning("hf3fs: %d of %d page writes failed: %s", len(aborted) + timed_out, len(new),
                        sorted({r for r in results if r != pb})[:4])
        try:
            confirmed = self.metadata.confirm(written, aborted)
        except MetadataUnavailable as exc:
            # The slots stay "being written" until their lease runs out; nothing is visible.
            log.warning("%s", exc)
            self._count(write_pages=n, metadata_errors=1)
            return out
        for i, ok in zip(wrote, confirmed):
            out[i] = ok
        stored = sum(confirmed)
        self._count(
            write_pages=n, write_stored=stored,
            write_already_stored=sum(a.status == EXISTS for a in allocs),
            write_no_space=sum(a.status == FULL for a in allocs), write_io_errors=len(aborted) + timed_out,
            write_lost_lease=len(confirmed) - stored, bytes_written=stored * pb,
        )
        return out

    # ------------------------------------------------------------------ single-key and legacy batch
    def _target_view(self, target: Any) -> tuple[torch.Tensor, memoryview] | None:
        pb = self.page_bytes
        if isinstance(target, torch.Tensor) and target.is_contiguous() and target.numel() * target.element_size() == pb:
            return target, self._bytes_view(target)
        if target is not None:
            return None
        if self.mem_pool_host is None:
            return None
        page = self.mem_pool_host.get_dummy_flat_data_page()
        return page, self._bytes_view(page)

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        views = [self._target_view(t) for t in locs]
        ok_idx = [i for i, v in enumerate(views) if v is not None]
        got = self._read_pages([keys[i] for i in ok_idx], [[views[i][1]] for i in ok_idx])  # type: ignore[index]
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
        return all(self._write_pages(keys, [[v] for v in views if v is not None], self._parents(keys, None)))

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        pages = pool.indices_to_pages(host_indices)
        return self._read_pages(keys, self._page_items(pool, pages))

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        pages = pool.indices_to_pages(host_indices)
        return self._write_pages(keys, self._page_items(pool, pages), self._parents(keys, extra_info))

    # ------------------------------------------------------------------ existence and removal
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        try:
            return self.metadata.exists([self._key(k) for k in keys])
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self._count(metadata_errors=1)
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
            self.metadata.delete([self._key(key)])
            return True
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self._count(metadata_errors=1)
            return False

    def clear(self) -> None:
        self.metadata.clear()

    # ------------------------------------------------------------------ status and lifecycle
    def get_stats(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self._counts)
        io = self.io
        return {
            "backend": BACKEND,
            "mode": self.mode,
            "on_3fs": io.on_3fs if io is not None else self.mount is not None,
            "client": io.describe() if io is not None else {"client": self.client_kind, "opened": False},
            "file_path": self.file_path,
            "writer_rank": self.is_writer,
            "metadata": self.metadata.stats(),
            **counts,
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
