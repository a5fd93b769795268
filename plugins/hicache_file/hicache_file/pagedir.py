"""One namespace's folder of ``pagefile`` pages: its shard folders, LRU index and startup scan.

Layout::

    <path>/<namespace>/<shard>/<key>.hcp

``<namespace>`` is the pool namespace (``hicache_core.keys.pool_namespace``: model, page
format, shard), so pools that store different bytes never share a folder, and ``clear()`` or a
size bound of one never touches another. ``<shard>`` is the first two hex characters of the key
(a hash of the name for keys that are not hex): no folder holds more than 1/256 of the pages.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator

from hicache_core.spec.errors import BackendConfigError
from hicache_file.config import FileStoreSettings
from hicache_file.fileio import OPEN_READ, tmp_is_stale, unlink_quietly
from hicache_file.lru import PageIndex
from hicache_file.pageformat import HEADER_SIZE, PREFIX_SIZE, verify_file

PAGE_SUFFIX = ".hcp"
TMP_PREFIX = ".tmp-"
#: A temporary file older than this whose writer cannot be told dead is removed on open.
STALE_TMP_SECONDS = 3600
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_HEX2 = frozenset(f"{i:02x}" for i in range(256))
_MAX_NAME = 200


def namespace_dirname(namespace: str) -> str:
    """A directory name for a namespace; distinct namespaces give distinct names."""
    ns = (namespace[1:] if namespace.startswith("_") else namespace) or "default"
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", ns).lstrip(".")
    if safe != ns or len(safe) > _MAX_NAME:
        safe = f"{safe[:_MAX_NAME]}~{hashlib.sha256(ns.encode()).hexdigest()[:10]}"
    return safe


def page_rel(key: str) -> str:
    """``<shard>/<file name>`` of the page of ``key`` inside its namespace folder."""
    # isascii/isalnum is the fast test for the usual hex keys; the regex admits ._- too.
    if ((key.isascii() and key.isalnum()) or _SAFE_KEY.fullmatch(key)) and len(key) <= _MAX_NAME:
        name = key + PAGE_SUFFIX
    else:
        name = "h" + hashlib.sha256(key.encode()).hexdigest() + PAGE_SUFFIX
    shard = key[:2]
    if shard not in _HEX2:
        shard = hashlib.blake2b(key.encode(), digest_size=1).hexdigest()
    return f"{shard}/{name}"


class NamespaceDir:
    """The folder of one namespace and the LRU index of its page files (relative names)."""

    def __init__(self, root: str, namespace: str, settings: FileStoreSettings, ns_check: int = 0) -> None:
        self.namespace = namespace
        #: The namespace's check as page headers carry it (``pageformat``).
        self.ns_check = ns_check
        self.path = os.path.join(root, namespace_dirname(namespace))
        self.index = PageIndex(settings.max_bytes, settings.max_pages)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"file backend: cannot create the page directory {self.path!r} under 'path' {root!r}: "
                f"{exc}; set 'path' (or HICACHE_FILE_PATH) to a writable directory"
            ) from exc

    def file(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def shard_entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """``(shard name, entry)`` for everything in this namespace's shard folders."""
        with os.scandir(self.path) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as files:
                    for entry in files:
                        yield shard.name, entry

    def evict_locked(self) -> int:
        """Remove least recently used pages until within the bound; the caller holds the lock."""
        victims = self.index.victims()
        for rel in victims:
            unlink_quietly(self.file(rel))
        return len(victims)

    def scan(self, lock: threading.Lock) -> Counter[str]:
        """Rebuild the LRU index from the folder and drop dead writers' temporary files."""
        entries: list[tuple[int, str, int]] = []
        stale: list[tuple[str, str]] = []
        now = time.time()
        for shard_name, entry in self.shard_entries():
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if name.startswith(TMP_PREFIX):
                pid_text = name[len(TMP_PREFIX) :].split("-", 1)[0]
                if tmp_is_stale(pid_text, st.st_mtime, now, STALE_TMP_SECONDS):
                    stale.append((shard_name, name))
            elif name.endswith(PAGE_SUFFIX):
                entries.append((st.st_mtime_ns, f"{shard_name}/{name}", st.st_size))
        counts: Counter[str] = Counter()
        for shard_name, name in stale:
            # A writer killed between removing the old page and renaming the new one left a
            # complete page in its temporary file: finish its rename. Anything else goes.
            tmp = f"{self.path}/{shard_name}/{name}"
            parts = name[len(TMP_PREFIX) :].split("-", 2)
            rel = f"{shard_name}/{parts[-1]}"
            final = self.file(rel)
            if len(parts) == 3 and parts[-1].endswith(PAGE_SUFFIX) and not os.path.exists(final) and verify_file(tmp):
                try:
                    os.rename(tmp, final)
                    st = os.stat(final)
                    entries.append((st.st_mtime_ns, rel, st.st_size))
                    counts["recovered"] += 1
                    continue
                except OSError:
                    pass
            unlink_quietly(tmp)
            counts["stale_tmp_removed"] += 1
        with lock:
            self.index.load(entries)
            counts["evictions"] += self.evict_locked()
        return counts

    def tmp_path(self, rel: str, tag: str) -> str:
        """A temporary file next to ``rel``'s final name: ``.tmp-<pid>-<n>-<name>``."""
        shard, name = rel.split("/", 1)
        return f"{self.path}/{shard}/{TMP_PREFIX}{tag}-{name}"

    def stored_header(self, rel: str) -> bytes | None:
        """The header of the page file under ``rel`` when its size fits that header, else None."""
        try:
            fd = os.open(self.file(rel), OPEN_READ)
        except OSError:
            return None
        try:
            header = os.pread(fd, HEADER_SIZE, 0)
            if len(header) != HEADER_SIZE:
                return None
            length = int.from_bytes(header[8:PREFIX_SIZE], "little")
            return header if os.fstat(fd).st_size == HEADER_SIZE + length else None
        except OSError:
            return None
        finally:
            os.close(fd)

    def touch_mtimes(self, rels: list[str]) -> None:
        """Refresh the files' mtimes when bounded: the LRU order a reopen rebuilds comes from them."""
        if not self.index.bounded:
            return
        for rel in rels:
            try:
                os.utime(self.file(rel))
            except OSError:
                pass
