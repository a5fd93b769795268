"""``FileStore``: the ``file`` backend, one checksummed file per page.

Layout on disk::

    <path>/<namespace>/<shard>/<key><namespace suffix>.hcp

``<namespace>`` is ``config.namespace_suffix()`` without its leading underscore (model, and
the tensor/pipeline rank for MHA), so models and shardings never read each other's pages;
``<shard>`` is the first two hex characters of the key (a hash of the name for keys that are
not hex), so no directory holds more than 1/256 of the pages.

Writes go to a temporary file in the same directory and are renamed over the final name, so
a process killed mid-write leaves the old page or the new one, never a torn one. Every file
starts with a header (``pageformat``) whose length, key check and checksum are verified on
every read; a page that fails is a miss, counted in ``get_stats()`` and removed.

Zero-copy v1: ``batch_get_v1`` reads header and page with one ``preadv`` straight into the
host pool's page memory, ``batch_set_v1`` writes with one ``pwritev`` straight from it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_file.config import FileStoreSettings
from hicache_file.lru import PageIndex
from hicache_file.pageformat import (
    ALGO_XXH3,
    HEADER_SIZE,
    MAGIC,
    PREFIX_SIZE,
    algorithm_id,
    check_header,
    checksum,
    header_prefix,
    key_check,
    pack_header,
    verify_file,
)
from hicache_file.plugin import CAPABILITIES

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

PAGE_SUFFIX = ".hcp"
TMP_PREFIX = ".tmp-"
#: A temporary file older than this whose writer cannot be told dead is removed on open.
STALE_TMP_SECONDS = 3600
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_HEX2 = frozenset(f"{i:02x}" for i in range(256))
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

#: Batches of smaller pages run on the calling thread: per page, the Python work between the
#: system calls outweighs the copy, and threads then only contend for the GIL (measured with
#: bench/bench_file.py: 64 KiB pages lose ~20% with two threads, 1 MiB pages gain ~40%).
PARALLEL_MIN_PAGE_BYTES = 256 << 10

#: Test hook: when set, a page write is split in two ``pwritev`` calls (header + first piece,
#: then the rest) and this is called between them. Used to kill a real process mid-write.
MID_WRITE_HOOK: Callable[[], None] | None = None

#: The guard byte past the page; what lands in it is never looked at, so threads may share it.
_GUARD = bytearray(1)
_CHECKS = struct.Struct("<QQ")
_LENGTH = struct.Struct("<Q")

#: This process's id, for temporary file names (kept current across fork).
_PID = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))

#: Test hook: called after an old page is removed and before its replacement is renamed in.
BEFORE_RENAME_HOOK: Callable[[], None] | None = None

T = TypeVar("T")
R = TypeVar("R")


def namespace_dirname(suffix: str) -> str:
    """A directory name for a namespace suffix; distinct suffixes give distinct names."""
    ns = (suffix[1:] if suffix.startswith("_") else suffix) or "default"
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", ns).lstrip(".")
    if safe != ns:
        safe = f"{safe}~{hashlib.sha256(ns.encode()).hexdigest()[:10]}"
    return safe


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _vectored_all(call: Callable[[int, list[memoryview], int], int], fd: int, bufs: list[Any], offset: int) -> int:
    """``call`` (``os.pwritev`` or ``os.preadv``) over every buffer from ``offset``, looping on short
    transfers and ``IOV_MAX``; returns the bytes moved (less than asked at end of file)."""
    views = [memoryview(b).cast("B") for b in bufs]
    total = 0
    while views:
        n = call(fd, views[:_IOV_MAX], offset + total)
        if n <= 0:
            break
        total += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return total


def _pwritev_all(fd: int, bufs: list[Any], offset: int) -> int:
    """Write every buffer at ``offset``."""
    return _vectored_all(os.pwritev, fd, bufs, offset)


def _preadv_all(fd: int, bufs: list[Any], offset: int) -> int:
    """Fill the buffers from ``offset``; returns bytes read (less at end of file)."""
    return _vectored_all(os.preadv, fd, bufs, offset)


class _PageViews:
    """Writable byte views of host-pool pages, without copies.

    The pool's pieces are at byte offsets linear in the page number for every layout; that is
    checked once here, and then a page's views are slices of one memoryview of the whole
    buffer (much cheaper per page than building tensor views). When the check fails the
    pool's own ``page_memoryviews`` is used.
    """

    def __init__(self, pool: HostKVPool) -> None:
        self.pool = pool
        buf = pool.kv_buffer
        self._whole = memoryview(buf.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        base = buf.data_ptr()
        first = pool.page_pieces(0)
        self._offsets = [p.ptr - base for p in first]
        self._sizes = [p.nbytes for p in first]
        self._stride = 0
        self.linear = True
        if pool.page_num > 1:
            self._stride = pool.page_pieces(1)[0].ptr - first[0].ptr
            for page in (1, pool.page_num - 1):
                expect = [o + page * self._stride for o in self._offsets]
                got = [p.ptr - base for p in pool.page_pieces(page)]
                if got != expect:
                    self.linear = False

    def views(self, page: int) -> list[memoryview]:
        if not self.linear:
            return self.pool.page_memoryviews(page)
        shift = page * self._stride
        w = self._whole
        return [w[o + shift : o + shift + s] for o, s in zip(self._offsets, self._sizes)]


class FileStore(HiCacheStorage):
    """Pages as files under a directory; see the module docstring.

    Extra-config keys: ``path`` (or ``file_storage_path``; env ``HICACHE_FILE_PATH`` or
    ``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR``; default ``/tmp/hicache``), ``max_bytes``,
    ``max_pages`` (LRU bound per namespace), ``fsync``, ``io_threads``, ``checksum``
    (``xxh3`` or ``crc32``), ``remove_corrupt``.

    With an MLA model only the writer rank (tensor rank 0) writes; the other ranks answer
    True to a set (rank 0 stores the same bytes) and read what rank 0 wrote.
    """

    contract_version = "1.0"
    capabilities = CAPABILITIES

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self.settings = FileStoreSettings.from_extra(self.config.extra())
        self.suffix = self.config.namespace_suffix()
        self.is_writer = self.config.is_writer_rank
        self.root = self.settings.path
        self.namespace_dir = os.path.join(self.root, namespace_dirname(self.suffix))
        self._algorithm = algorithm_id(self.settings.checksum)
        self._lock = threading.Lock()
        self._index = PageIndex(self.settings.max_bytes, self.settings.max_pages)
        self._stats: Counter[str] = Counter()
        self._tmp_counter = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._views: _PageViews | None = None
        self._prefix_cache: tuple[int, bytes] | None = None
        try:
            os.makedirs(self.namespace_dir, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"file backend: cannot create the page directory {self.namespace_dir!r} under 'path' "
                f"{self.root!r}: {exc}; set 'path' (or HICACHE_FILE_PATH) to a writable directory"
            ) from exc
        if self.is_writer:
            self._scan()

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._views = _PageViews(mem_pool_host)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def health_check(self) -> None:
        if not os.path.isdir(self.namespace_dir):
            raise HiCacheError(f"file backend: page directory {self.namespace_dir!r} is gone")
        if self.is_writer and not os.access(self.namespace_dir, os.W_OK | os.X_OK):
            raise HiCacheError(f"file backend: page directory {self.namespace_dir!r} is not writable")

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
            stats.update(
                pages=len(self._index), bytes=self._index.total_bytes,
                max_bytes=self._index.max_bytes, max_pages=self._index.max_pages,
            )
        for name in ("hits", "misses", "corrupt", "wrong_size", "writes", "write_errors", "evictions"):
            stats.setdefault(name, 0)
        stats["path"] = self.namespace_dir
        return stats

    # ------------------------------------------------------------------ names
    def _rel(self, key: str) -> tuple[str, str]:
        """``(relative path, storage key)`` of a page."""
        full = key + self.suffix
        # isascii/isalnum is the fast test for the usual hex keys; the regex admits ._- too.
        if ((key.isascii() and key.isalnum()) or _SAFE_KEY.fullmatch(key)) and len(full) <= 200:
            name = full + PAGE_SUFFIX
        else:
            name = "h" + hashlib.sha256(full.encode()).hexdigest() + PAGE_SUFFIX
        shard = key[:2]
        if shard not in _HEX2:
            shard = hashlib.blake2b(full.encode(), digest_size=1).hexdigest()
        return f"{shard}/{name}", full

    def _path(self, rel: str) -> str:
        return f"{self.namespace_dir}/{rel}"

    def _expected_len(self) -> int | None:
        pool = self.mem_pool_host
        return pool.page_bytes if pool is not None else None

    # ------------------------------------------------------------------ startup scan
    def _scan(self) -> None:
        """Rebuild the LRU index from the directory and drop dead writers' temporary files."""
        entries: list[tuple[int, str, int]] = []
        stale: list[tuple[str, str]] = []
        now = time.time()
        removed_tmp = 0
        for shard_name, entry in self._shard_entries():
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if name.startswith(TMP_PREFIX):
                if self._tmp_is_stale(name, st.st_mtime, now):
                    stale.append((shard_name, name))
            elif name.endswith(PAGE_SUFFIX):
                entries.append((st.st_mtime_ns, f"{shard_name}/{name}", st.st_size))
        recovered = 0
        for shard_name, name in stale:
            # A writer killed between removing the old page and renaming the new one left a
            # complete page in its temporary file: finish its rename. Anything else goes.
            tmp = f"{self.namespace_dir}/{shard_name}/{name}"
            parts = name[len(TMP_PREFIX) :].split("-", 2)
            rel = f"{shard_name}/{parts[-1]}"
            final = self._path(rel)
            if len(parts) == 3 and parts[-1].endswith(PAGE_SUFFIX) and not os.path.exists(final) and verify_file(tmp):
                try:
                    os.rename(tmp, final)
                    st = os.stat(final)
                    entries.append((st.st_mtime_ns, rel, st.st_size))
                    recovered += 1
                    continue
                except OSError:
                    pass
            _unlink_quietly(tmp)
            removed_tmp += 1
        with self._lock:
            self._index.load(entries)
            self._stats["stale_tmp_removed"] += removed_tmp
            self._stats["recovered"] += recovered
            self._stats["evictions"] += self._evict_locked()

    @staticmethod
    def _tmp_is_stale(name: str, mtime: float, now: float) -> bool:
        pid_text = name[len(TMP_PREFIX) :].split("-", 1)[0]
        if now - mtime > STALE_TMP_SECONDS:
            return True
        return pid_text.isdigit() and not _pid_alive(int(pid_text))

    # ------------------------------------------------------------------ batching
    def _map_batch(self, fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
        """Run ``fn`` over contiguous chunks of ``items`` on ``io_threads`` threads, in order."""
        threads = min(self.settings.io_threads, len(items))
        pool = self.mem_pool_host
        if threads <= 1 or (pool is not None and pool.page_bytes < PARALLEL_MIN_PAGE_BYTES):
            return fn(items)
        step = -(-len(items) // threads)
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.settings.io_threads - 1, thread_name_prefix="hicache-file"
                )
            executor = self._executor
        futures = [executor.submit(fn, c) for c in chunks[1:]]
        out = fn(chunks[0])
        for f in futures:
            out.extend(f.result())
        return out

    # ------------------------------------------------------------------ reading
    def _read_into(
        self, rel: str, full: str, views: list[memoryview], expected: int, stats: Counter[str],
        header: bytearray | None = None,
    ) -> bool:
        """Read one page file into ``views``; True only for a sound page of ``expected`` bytes.

        ``header`` is a 32-byte scratch buffer a caller may reuse between pages.
        """
        path = self._path(rel)
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            stats["misses"] += 1
            return False
        except OSError as exc:
            stats["read_errors"] += 1
            log.warning("file backend: cannot open %s: %s", path, exc)
            return False
        if header is None:
            header = bytearray(HEADER_SIZE)
        try:
            # One extra byte past the page tells a file that is too long in the same call.
            bufs: list[Any] = [header, *views, _GUARD]
            # A regular file fills every buffer up to its end, so one call suffices.
            n = os.preadv(fd, bufs, 0) if len(bufs) <= _IOV_MAX else _preadv_all(fd, bufs, 0)
            why = ""
            other_size = False
            if n != HEADER_SIZE + expected:
                size = os.fstat(fd).st_size
                stored = _LENGTH.unpack_from(header, 8)[0] if n >= HEADER_SIZE else -1
                # A whole page of another size (another pool shape, or a caller's buffer of the
                # wrong size) is not damage: it is a miss here, and the file stays.
                other_size = header[:4] == MAGIC and size == HEADER_SIZE + stored
                why = f"file is {size} bytes, a page file here is {HEADER_SIZE + expected}"
            elif header[:PREFIX_SIZE] == self._prefix(expected):
                # Fast path: this store's own format and page size; only the two checks remain.
                payload_checksum, kcheck = _CHECKS.unpack_from(header, PREFIX_SIZE)
                if kcheck != key_check(self._algorithm, full):
                    why = "file holds another key"
                elif checksum(self._algorithm, views) != payload_checksum:
                    why = "checksum mismatch"
            else:
                checked = check_header(header, full, expected)
                if isinstance(checked, str):
                    why = checked
                elif checksum(checked[0], views) != checked[2]:
                    why = "checksum mismatch"
            inode = os.fstat(fd).st_ino if why else 0
        except OSError as exc:
            stats["read_errors"] += 1
            log.warning("file backend: cannot read %s: %s", path, exc)
            return False
        finally:
            os.close(fd)
        if other_size:
            stats["wrong_size"] += 1
            log.debug("file backend: page %s is not served: %s", path, why)
            return False
        if why:
            self._corrupt(rel, path, inode, why, stats)
            return False
        return True  # the caller counts hits, once per batch

    def _prefix(self, length: int) -> bytes:
        """The first header bytes of a page of ``length`` bytes written by this store."""
        cached = self._prefix_cache
        if cached is None or cached[0] != length:
            cached = (length, header_prefix(self._algorithm, length))
            self._prefix_cache = cached
        return cached[1]

    def _corrupt(self, rel: str, path: str, inode: int, why: str, stats: Counter[str]) -> None:
        stats["corrupt"] += 1
        log.warning("file backend: page %s is not served: %s", path, why)
        if not self.settings.remove_corrupt:
            return
        with self._lock:
            try:
                # Only the file we read: a writer may have renamed a good page over it since.
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    self._index.remove(rel)
                    stats["corrupt_removed"] += 1
            except OSError:
                pass

    def _touch_hits(self, rels: list[str]) -> None:
        """Mark hits as recently used, in memory and (when bounded) in the file's mtime."""
        if not rels:
            return
        with self._lock:
            for rel in rels:
                self._index.touch(rel)
        self._touch_mtimes(rels)

    def _touch_mtimes(self, rels: list[str]) -> None:
        """Refresh the files' mtimes when bounded: the LRU order a reopen rebuilds comes from them."""
        if not self._index.bounded:
            return
        for rel in rels:
            try:
                os.utime(self._path(rel))
            except OSError:
                pass

    def _merge(self, stats: Counter[str]) -> None:
        with self._lock:
            self._stats.update(stats)

    def _get_pages(self, items: list[tuple[str, int]]) -> list[bool]:
        views_of = self._views
        assert views_of is not None
        expected = views_of.pool.page_bytes
        stats: Counter[str] = Counter()
        hits: list[str] = []
        out: list[bool] = []
        header = bytearray(HEADER_SIZE)
        rel_of, read_into, views = self._rel, self._read_into, views_of.views
        for key, page in items:
            rel, full = rel_of(key)
            ok = read_into(rel, full, views(page), expected, stats, header)
            out.append(ok)
            if ok:
                hits.append(rel)
        stats["hits"] += len(hits)
        stats["bytes_read"] += len(hits) * expected
        self._touch_hits(hits)
        self._merge(stats)
        return out

    # ------------------------------------------------------------------ writing
    def _write_tmp(self, rel: str, full: str, pieces: list[Any], stats: Counter[str]) -> tuple[str | None, int] | None:
        """Write a page to a new temporary file next to its final name; ``(tmp, bytes)``.

        ``tmp`` is None when the same page is already stored under the name (nothing to
        write); the result is None when the page could not be written.
        """
        length = sum(memoryview(p).nbytes for p in pieces)
        if not self._index.fits(HEADER_SIZE + length):
            stats["write_errors"] += 1
            stats["too_large"] += 1
            return None
        header = pack_header(self._algorithm, length, checksum(self._algorithm, pieces), full)
        # Only pages the index knows can be there already (another process's page that the
        # index missed is simply rewritten).
        if self._algorithm == ALGO_XXH3 and rel in self._index and self._stored_header(rel) == header:
            # Same key, same length, same 64-bit payload hash: the bytes are already there.
            # Skipping the rewrite matters: renaming over an existing file makes ext4 start
            # writeback at once (auto_da_alloc), several times the cost of a new page.
            stats["unchanged"] += 1
            return None, HEADER_SIZE + length
        shard, name = rel.split("/", 1)
        tmp = f"{self.namespace_dir}/{shard}/{TMP_PREFIX}{_PID[0]}-{next(self._tmp_counter)}-{name}"
        try:
            try:
                fd = os.open(tmp, _OPEN_WRITE, 0o644)
            except FileNotFoundError:  # first page of this shard, or the directory was removed
                os.makedirs(f"{self.namespace_dir}/{shard}", exist_ok=True)
                fd = os.open(tmp, _OPEN_WRITE, 0o644)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot create %s: %s", tmp, exc)
            return None
        try:
            hook = MID_WRITE_HOOK
            if hook is None:
                n = _pwritev_all(fd, [header, *pieces], 0)
            else:
                n = _pwritev_all(fd, [header, pieces[0]], 0)
                hook()
                n += _pwritev_all(fd, pieces[1:], n)
            if n != HEADER_SIZE + length:
                raise OSError(f"short write: {n} of {HEADER_SIZE + length} bytes")
            if self.settings.fsync:
                os.fsync(fd)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot write %s: %s", tmp, exc)
            os.close(fd)
            _unlink_quietly(tmp)
            return None
        os.close(fd)
        return tmp, HEADER_SIZE + length

    def _stored_header(self, rel: str) -> bytes | None:
        """The header of the page file under ``rel`` when its size fits that header, else None."""
        try:
            fd = os.open(self._path(rel), _OPEN_READ)
        except OSError:
            return None
        try:
            header = os.pread(fd, HEADER_SIZE, 0)
            if len(header) != HEADER_SIZE:
                return None
            length = _LENGTH.unpack_from(header, 8)[0]
            return header if os.fstat(fd).st_size == HEADER_SIZE + length else None
        except OSError:
            return None
        finally:
            os.close(fd)

    def _set_pages(self, items: list[tuple[str, list[Any]]]) -> list[bool]:
        if not self.is_writer:
            # MLA: every rank holds the same KV and rank 0 stores it.
            self._merge(Counter(skipped_not_writer=len(items)))
            return [True] * len(items)
        stats: Counter[str] = Counter()
        written: list[tuple[int, str, str | None, int]] = []
        out = [False] * len(items)
        for i, (key, pieces) in enumerate(items):
            rel, full = self._rel(key)
            done = self._write_tmp(rel, full, pieces, stats)
            if done is not None:
                written.append((i, rel, done[0], done[1]))
        dirs: set[str] = set()
        unchanged: list[str] = []
        redo: list[int] = []
        with self._lock:
            # Renames and evictions under one lock keep the index equal to the directory.
            for i, rel, tmp, nbytes in written:
                if tmp is None:  # already stored: count it as used now
                    if rel not in self._index:  # deleted or evicted since the check: write it
                        redo.append(i)
                        continue
                    self._index.put(rel, nbytes)
                    unchanged.append(rel)
                    out[i] = True
                    continue
                final = self._path(rel)
                try:
                    # Remove the old page first, then rename: renaming over an existing file
                    # makes ext4 write the new one back at once (auto_da_alloc), several times
                    # slower. Readers see the old page, a miss, or the new page; a kill in
                    # between leaves the complete temporary file, renamed on the next open.
                    if rel in self._index:
                        _unlink_quietly(final)
                    hook = BEFORE_RENAME_HOOK
                    if hook is not None:
                        hook()
                    os.rename(tmp, final)
                except OSError as exc:
                    stats["write_errors"] += 1
                    log.warning("file backend: cannot rename %s: %s", tmp, exc)
                    _unlink_quietly(tmp)
                    continue
                self._index.put(rel, nbytes)
                out[i] = True
                stats["writes"] += 1
                stats["bytes_written"] += nbytes - HEADER_SIZE
                dirs.add(rel.split("/", 1)[0])
            stats["evictions"] += self._evict_locked()
            self._stats.update(stats)
        self._touch_mtimes(unchanged)
        if self.settings.fsync:
            for shard in dirs:  # the rename itself is durable only once the directory is
                _fsync_dir(f"{self.namespace_dir}/{shard}")
        if redo:
            for i, ok in zip(redo, self._set_pages([items[i] for i in redo])):
                out[i] = ok
        return out

    def _evict_locked(self) -> int:
        victims = self._index.victims()
        for rel in victims:
            _unlink_quietly(self._path(rel))
        return len(victims)

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Read each page straight into the host pool; one bool per key (False: miss or bad page).

        A page reported False may have had its destination slot overwritten by a rejected
        read; such slots hold no meaning.
        """
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pages = pool.indices_to_pages(host_indices)
        return self._map_batch(self._get_pages, list(zip(keys, pages)))

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Write each host-pool page straight from its memory; one bool per key."""
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        views = self._views
        assert views is not None
        items: list[tuple[str, list[Any]]] = [(k, views.views(p)) for k, p in zip(keys, pool.indices_to_pages(host_indices))]
        return self._map_batch(self._set_pages, items)

    # ------------------------------------------------------------------ single-key and legacy
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        """The page under ``key`` (read into ``target_location`` when that is a CPU tensor)."""
        rel, full = self._rel(key)
        stats: Counter[str] = Counter()
        target = target_location if isinstance(target_location, torch.Tensor) else None
        if target is not None and (target.device.type != "cpu" or not target.is_contiguous()):
            staged = self.get(key)
            if staged is None or staged.numel() * staged.element_size() != target.numel() * target.element_size():
                return None
            target.view(-1).view(torch.uint8).copy_(staged.view(-1).view(torch.uint8))
            return target
        if target is None:
            expected = self._expected_len()
            if expected is None:
                try:
                    expected = os.stat(self._path(rel)).st_size - HEADER_SIZE
                except OSError:
                    self._merge(Counter(misses=1))
                    return None
                if expected < 0:
                    expected = 0
            pool = self.mem_pool_host
            dtype = pool.dtype if pool is not None and expected % pool.itemsize == 0 else torch.uint8
            target = torch.empty(expected // dtype.itemsize, dtype=dtype)
        raw = target.view(-1).view(torch.uint8)
        ok = self._read_into(rel, full, [_bytes_view(raw)], raw.numel(), stats)
        if ok:
            stats["hits"] += 1
            stats["bytes_read"] += raw.numel()
            self._touch_hits([rel])
        self._merge(stats)
        return target if ok else None

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        return [self.get(k, loc) for k, loc in zip(keys, locs)]

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        """Store each flat page tensor; True only when every page is stored."""
        if values is None:
            return False
        items: list[tuple[str, list[Any]]] = []
        for key, value in zip(keys, values):
            if not isinstance(value, torch.Tensor):
                return False
            raw = value.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
            items.append((key, [_bytes_view(raw)]))
        stored: list[bool] = self._map_batch(self._set_pages, items)
        return len(items) == len(keys) and all(stored)

    def exists(self, key: str) -> bool:
        """True when a page file of the right size is there (the data is not read)."""
        rel, _ = self._rel(key)
        try:
            size = os.stat(self._path(rel)).st_size
        except OSError:
            return False
        expected = self._expected_len()
        return size == HEADER_SIZE + expected if expected is not None else size >= HEADER_SIZE

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        return [self.exists(k) for k in keys]

    def delete(self, key: str) -> bool:
        rel, _ = self._rel(key)
        with self._lock:
            try:
                os.unlink(self._path(rel))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("file backend: cannot delete %s: %s", rel, exc)
                return False
            self._index.remove(rel)
        return True

    def clear(self) -> None:
        """Remove every page of this namespace (other models and ranks keep theirs)."""
        with self._lock:
            for _, entry in self._shard_entries():
                if entry.name.endswith(PAGE_SUFFIX):
                    _unlink_quietly(entry.path)
            self._index.clear()

    def _shard_entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """``(shard name, entry)`` for everything in this namespace's shard folders."""
        with os.scandir(self.namespace_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as files:
                    for entry in files:
                        yield shard.name, entry

    def __repr__(self) -> str:
        return f"FileStore({self.namespace_dir!r}, pages={len(self._index)})"


def _bytes_view(raw: torch.Tensor) -> memoryview:
    """A writable memoryview of a contiguous CPU uint8 tensor, sharing its memory."""
    return memoryview(raw.numpy())  # type: ignore[arg-type]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
