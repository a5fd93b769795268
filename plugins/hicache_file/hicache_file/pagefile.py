"""Scheme ``pagefile`` (the default): one checksummed file per page, under the pool namespace.

Layout on disk: ``<path>/<pool namespace>/<shard>/<key>.hcp`` (``pagedir``). Every file starts
with a header (``pageformat``) whose length, namespace check, key check and checksum are
verified on every read; a damaged page is a miss, counted and removed, and a page of another
pool's namespace (a file copied across) is a miss counted as ``format_mismatch``.

Writes go to a temporary file in the same folder and are renamed over the final name, so a
process killed mid-write leaves the old page or the new one, never a torn one. Zero-copy: a
read is one ``preadv`` of header, page pieces and a guard byte straight into the host pool; a
write is one ``pwritev`` straight from it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from hicache_core.keys import sidecar_page_hash
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import HiCacheError
from hicache_file.base import KV, FileSchemeBase, Item
from hicache_file.fileio import (
    GUARD,
    OPEN_WRITE,
    fsync_dir,
    open_page,
    pwritev_all,
    read_whole,
    tmp_tag,
    unlink_quietly,
)
from hicache_file.pagedir import NamespaceDir, page_rel
from hicache_file.pageformat import (
    ALGO_XXH3,
    CHECKS,
    HEADER_SIZE,
    MAGIC,
    OTHER_NAMESPACE,
    PREFIX_SIZE,
    algorithm_id,
    check_header,
    checksum,
    header_prefix,
    key_check,
    pack_header,
)

log = logging.getLogger("hicache_file.store")

#: Test hook: when set, a page write is split in two ``pwritev`` calls (header + first piece,
#: then the rest) and this is called between them. Used to kill a real process mid-write.
MID_WRITE_HOOK: Callable[[], None] | None = None
#: Test hook: called after an old page is removed and before its replacement is renamed in.
BEFORE_RENAME_HOOK: Callable[[], None] | None = None

_LENGTH_OFFSET = 8


class PageFileStore(FileSchemeBase):
    """Pages as checksummed files under the pool namespace; see the module docstring.

    With an MLA model only the writer rank writes KV; the other ranks answer True to a set
    (the writer stores the same bytes) and read what it wrote.
    """

    scheme = "pagefile"

    def __init__(self, config: Any | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self._algorithm = algorithm_id(self.settings.checksum)
        self._dirs: dict[str, NamespaceDir] = {}
        self._open_lock = threading.Lock()
        self._prefix_cache: tuple[int, bytes] | None = None

    # ------------------------------------------------------------------ namespace folders
    def _dir(self) -> NamespaceDir:
        """The folder of the current namespace, opened (and scanned) on first use."""
        ns = self.namespace
        folder = self._dirs.get(ns)
        if folder is None:
            with self._open_lock:
                folder = self._dirs.get(ns)
                if folder is None:
                    folder = NamespaceDir(self.root, ns, self.settings, key_check(self._algorithm, ns))
                    if self.is_writer:
                        self._merge(folder.scan(self._lock))
                    self._dirs[ns] = folder
        return folder

    def _pool_changed(self) -> None:
        self._dir()

    @property
    def namespace_dir(self) -> str:
        return self._dir().path

    def _sidecar_keys(self, pool: str, keys: Sequence[str]) -> list[str]:
        config = HiCacheStorageConfig.from_any(self.config)
        sidecar = self._sidecar(pool).pool
        return [sidecar_page_hash(k, pool, sidecar, config) for k in keys]

    # ------------------------------------------------------------------ lifecycle
    def health_check(self) -> None:
        path = self._dir().path
        if not os.path.isdir(path):
            raise HiCacheError(f"file backend: page directory {path!r} is gone")
        if self.is_writer and not os.access(path, os.W_OK | os.X_OK):
            raise HiCacheError(f"file backend: page directory {path!r} is not writable")

    def _more_stats(self) -> dict[str, Any]:
        folder = self._dir()
        with self._lock:
            out: dict[str, Any] = {
                "pages": len(folder.index), "bytes": folder.index.total_bytes,
                "max_bytes": folder.index.max_bytes, "max_pages": folder.index.max_pages,
                "path": folder.path, "namespace": folder.namespace,
            }
            for name in ("recovered", "stale_tmp_removed"):
                out[name] = self._stats.get(name, 0)
        return out

    # ------------------------------------------------------------------ reading
    def _read_pages(self, items: list[Item], expected: int, pool: str) -> list[bool]:
        folder = self._dir()
        stats: Counter[str] = Counter()
        hits: list[str] = []
        out: list[bool] = []
        header = bytearray(HEADER_SIZE)
        for key, views in items:
            rel = page_rel(key)
            ok = self._read_into(folder, rel, key, views, expected, stats, header)
            out.append(ok)
            if ok:
                hits.append(rel)
        stats["hits"] += len(hits)
        stats["bytes_read"] += len(hits) * expected
        self._touch_hits(folder, hits)
        self._merge(stats)
        return out

    def _read_into(
        self, folder: NamespaceDir, rel: str, key: str, views: list[memoryview], expected: int,
        stats: Counter[str], header: bytearray,
    ) -> bool:
        """Read one page file into ``views``; True only for a sound page of ``expected`` bytes."""
        path = folder.file(rel)
        fd = open_page(path, stats)
        if fd is None:
            return False
        try:
            # One extra byte past the page tells a file that is too long in the same call.
            n = read_whole(fd, [header, *views, GUARD])
            why = ""
            other = ""
            if n != HEADER_SIZE + expected:
                size = os.fstat(fd).st_size
                stored = int.from_bytes(header[_LENGTH_OFFSET:PREFIX_SIZE], "little") if n >= HEADER_SIZE else -1
                # A whole page of another size (another pool shape, or a caller's buffer of the
                # wrong size) is not damage: it is a miss here, and the file stays.
                if header[:4] == MAGIC and size == HEADER_SIZE + stored:
                    other = "wrong_size"
                why = f"file is {size} bytes, a page file here is {HEADER_SIZE + expected}"
            elif header[:PREFIX_SIZE] == self._prefix(expected):
                # Fast path: this store's own format and page size; only the checks remain.
                payload_checksum, kcheck, nscheck = CHECKS.unpack_from(header, PREFIX_SIZE)
                if nscheck != folder.ns_check:
                    other, why = "format_mismatch", OTHER_NAMESPACE
                elif kcheck != key_check(self._algorithm, key):
                    why = "file holds another key"
                elif checksum(self._algorithm, views) != payload_checksum:
                    why = "checksum mismatch"
            else:
                checked = check_header(header, key, folder.namespace, expected)
                if checked == OTHER_NAMESPACE:
                    other, why = "format_mismatch", OTHER_NAMESPACE
                elif isinstance(checked, str):
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
        if other:
            stats[other] += 1
            log.debug("file backend: page %s is not served: %s", path, why)
            return False
        if why:
            self._corrupt(folder, rel, path, inode, why, stats)
            return False
        return True  # the caller counts hits, once per batch

    def _prefix(self, length: int) -> bytes:
        """The first header bytes of a page of ``length`` bytes written by this store."""
        cached = self._prefix_cache
        if cached is None or cached[0] != length:
            cached = (length, header_prefix(self._algorithm, length))
            self._prefix_cache = cached
        return cached[1]

    def _corrupt(self, folder: NamespaceDir, rel: str, path: str, inode: int, why: str, stats: Counter[str]) -> None:
        stats["corrupt"] += 1
        log.warning("file backend: page %s is not served: %s", path, why)
        if not self.settings.remove_corrupt:
            return
        with self._lock:
            try:
                # Only the file we read: a writer may have renamed a good page over it since.
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    folder.index.remove(rel)
                    stats["corrupt_removed"] += 1
            except OSError:
                pass

    def _touch_hits(self, folder: NamespaceDir, rels: list[str]) -> None:
        """Mark hits as recently used, in memory and (when bounded) in the file's mtime."""
        if not rels:
            return
        with self._lock:
            for rel in rels:
                folder.index.touch(rel)
        folder.touch_mtimes(rels)

    # ------------------------------------------------------------------ writing
    def _write_pages(self, items: list[Item], pool: str) -> list[bool]:
        if not self.is_writer and pool == KV:
            # MLA: every rank holds the same KV and the writer rank stores it. Sidecar states
            # are TP-sharded (their keys name the rank), so every rank writes its own.
            self._merge(Counter(skipped_not_writer=len(items)))
            return [True] * len(items)
        folder = self._dir()
        stats: Counter[str] = Counter()
        written: list[tuple[int, str, str | None, int, bytes]] = []
        out = [False] * len(items)
        for i, (key, pieces) in enumerate(items):
            rel = page_rel(key)
            done = self._write_tmp(folder, rel, key, pieces, stats)
            if done is not None:
                written.append((i, rel, *done))
        dirs: set[str] = set()
        unchanged: list[str] = []
        redo: list[int] = []
        with self._lock:
            # Renames and evictions under one lock keep the index equal to the directory.
            for i, rel, tmp, nbytes, header in written:
                if tmp is None:  # already stored: count it as used now
                    if rel not in folder.index:  # deleted or evicted since the check: write it
                        redo.append(i)
                        continue
                    folder.index.put(rel, nbytes)
                    unchanged.append(rel)
                    out[i] = True
                    continue
                final = folder.file(rel)
                try:
                    # Remove the old page first, then rename: renaming over an existing file
                    # makes ext4 write the new one back at once (auto_da_alloc), several times
                    # slower. Readers see the old page, a miss, or the new page; a kill in
                    # between leaves the complete temporary file, renamed on the next open.
                    if rel in folder.index:
                        if folder.stored_header(rel) == header:
                            # The same page (key, namespace, length, checksum) is there already,
                            # e.g. another thread stored it since our check: keep its file
                            # (unlink + rename would open a window in which readers miss).
                            unlink_quietly(tmp)
                            folder.index.put(rel, nbytes)
                            unchanged.append(rel)
                            out[i] = True
                            stats["unchanged"] += 1
                            continue
                        unlink_quietly(final)
                    hook = BEFORE_RENAME_HOOK
                    if hook is not None:
                        hook()
                    os.rename(tmp, final)
                except OSError as exc:
                    stats["write_errors"] += 1
                    log.warning("file backend: cannot rename %s: %s", tmp, exc)
                    unlink_quietly(tmp)
                    continue
                folder.index.put(rel, nbytes)
                out[i] = True
                stats["writes"] += 1
                stats["bytes_written"] += nbytes - HEADER_SIZE
                dirs.add(rel.split("/", 1)[0])
            stats["evictions"] += folder.evict_locked()
            self._stats.update(stats)
        folder.touch_mtimes(unchanged)
        if self.settings.fsync:
            for shard in dirs:  # the rename itself is durable only once the directory is
                fsync_dir(f"{folder.path}/{shard}")
        if redo:
            for i, ok in zip(redo, self._write_pages([items[i] for i in redo], pool)):
                out[i] = ok
        return out

    def _write_tmp(
        self, folder: NamespaceDir, rel: str, key: str, pieces: list[Any], stats: Counter[str]
    ) -> tuple[str | None, int, bytes] | None:
        """Write a page to a new temporary file next to its final name; ``(tmp, bytes, header)``.

        ``tmp`` is None when the same page is already stored under the name (nothing to
        write); the result is None when the page could not be written.
        """
        length = sum(memoryview(p).nbytes for p in pieces)
        if not folder.index.fits(HEADER_SIZE + length):
            stats["write_errors"] += 1
            stats["too_large"] += 1
            return None
        header = pack_header(self._algorithm, length, checksum(self._algorithm, pieces), key, folder.namespace)
        # Only pages the index knows can be there already (another process's page that the
        # index missed is simply rewritten).
        if self._algorithm == ALGO_XXH3 and rel in folder.index and folder.stored_header(rel) == header:
            # Same key, namespace, length and 64-bit payload hash: the bytes are already there.
            # Skipping the rewrite matters: renaming over an existing file makes ext4 start
            # writeback at once (auto_da_alloc), several times the cost of a new page.
            stats["unchanged"] += 1
            return None, HEADER_SIZE + length, header
        tmp = folder.tmp_path(rel, tmp_tag())
        try:
            try:
                fd = os.open(tmp, OPEN_WRITE, 0o644)
            except FileNotFoundError:  # first page of this shard, or the directory was removed
                os.makedirs(os.path.dirname(tmp), exist_ok=True)
                fd = os.open(tmp, OPEN_WRITE, 0o644)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot create %s: %s", tmp, exc)
            return None
        try:
            hook = MID_WRITE_HOOK
            if hook is None:
                n = pwritev_all(fd, [header, *pieces], 0)
            else:
                n = pwritev_all(fd, [header, pieces[0]], 0)
                hook()
                n += pwritev_all(fd, pieces[1:], n)
            if n != HEADER_SIZE + length:
                raise OSError(f"short write: {n} of {HEADER_SIZE + length} bytes")
            if self.settings.fsync:
                os.fsync(fd)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot write %s: %s", tmp, exc)
            os.close(fd)
            unlink_quietly(tmp)
            return None
        os.close(fd)
        return tmp, HEADER_SIZE + length, header

    # ------------------------------------------------------------------ existence, removal
    def _exists(self, key: str, expected: int | None, pool: str) -> bool:
        try:
            size = os.stat(self._dir().file(page_rel(key))).st_size
        except OSError:
            return False
        return size == HEADER_SIZE + expected if expected is not None else size >= HEADER_SIZE

    def _stored_length(self, key: str) -> int | None:
        try:
            return max(0, os.stat(self._dir().file(page_rel(key))).st_size - HEADER_SIZE)
        except OSError:
            return None

    def delete(self, key: str) -> bool:
        folder = self._dir()
        rel = page_rel(key)
        with self._lock:
            try:
                os.unlink(folder.file(rel))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("file backend: cannot delete %s: %s", rel, exc)
                return False
            folder.index.remove(rel)
        return True

    def clear(self) -> None:
        """Remove every page of this namespace (other models, formats and ranks keep theirs)."""
        folder = self._dir()
        with self._lock:
            for _, entry in folder.shard_entries():
                if entry.name.endswith(".hcp"):
                    unlink_quietly(entry.path)
            folder.index.clear()

    def __repr__(self) -> str:
        folder = self._dirs.get(self.namespace)
        return f"PageFileStore({folder.path if folder else self.root!r}, pages={len(folder.index) if folder else 0})"
