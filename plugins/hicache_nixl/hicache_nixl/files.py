"""Where a page file lives, and the size bound over the page files.

One file per page: ``<storage_dir>/<ab>/<cd>/<key>``, the two shard levels taken from a CRC
of the key so that any key spreads evenly (a key too long for a file name is named by its
SHA-256). Files are written under a temporary name and
renamed, so a reader sees a whole page or nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

_SHARD = re.compile(r"^[0-9a-f]{2}$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.@\-]+$")
TMP_MARK = ".tmp-"
#: File names stop at 255 bytes; a longer (quoted) name, with room for the temporary suffix,
#: becomes the SHA-256 of the key instead.
_MAX_NAME = 200


class PageFiles:
    """Paths of page files under one directory."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._made: set[str] = set()
        self._lock = threading.Lock()
        self._tmp_counter = itertools.count()

    def path(self, key: str) -> str:
        # Plain strings, not pathlib: this runs once per page on the request path.
        shard = zlib.crc32(key.encode()) & 0xFFFF  # spreads any key evenly; cheap per page
        # A key is a file name, never a path: quote escapes '/', and '.'/'..' are spelled out.
        name = key if _PLAIN_NAME.match(key) else quote(key, safe="")  # hex keys: no quoting cost
        if not name.strip("."):
            name = "%2E" * len(name) or "%00"
        if len(name) > _MAX_NAME:
            name = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
        return f"{self._root}/{shard >> 8:02x}/{shard & 0xFF:02x}/{name}"

    def ensure_dir(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent in self._made:
            return
        os.makedirs(parent, exist_ok=True)
        with self._lock:
            self._made.add(parent)

    def tmp_path(self, path: str) -> str:
        return f"{path}{TMP_MARK}{os.getpid()}-{threading.get_ident()}-{next(self._tmp_counter)}"

    def _shard_files(self) -> Iterator[os.DirEntry[str]]:
        """Every file (temporaries included) in the two-level shard folders, in no particular order."""
        if not self.root.is_dir():
            return
        for first in os.scandir(self.root):
            if not (first.is_dir() and _SHARD.match(first.name)):
                continue
            for second in os.scandir(first.path):
                if not (second.is_dir() and _SHARD.match(second.name)):
                    continue
                for entry in os.scandir(second.path):
                    if entry.is_file():
                        yield entry

    def iter_pages(self) -> list[tuple[str, os.stat_result]]:
        """Every page file (temporaries excluded) with its stat, in no particular order."""
        found: list[tuple[str, os.stat_result]] = []
        for entry in self._shard_files():
            if TMP_MARK not in entry.name:
                try:
                    found.append((entry.path, entry.stat()))
                except FileNotFoundError:
                    continue
        return found

    def remove_all(self) -> int:
        """Delete every page file and temporary under the shard folders; returns files removed.

        Only the two-hex-digit shard folders are touched, so a misconfigured storage_dir
        never loses files this backend did not write.
        """
        removed = 0
        for entry in self._shard_files():
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed


class SizeBound:
    """Least-recently-used order and total bytes of the page files; evicts past ``max_bytes``.

    The order starts from the files' modification times when the backend opens, then
    follows this process's reads and writes.
    """

    def __init__(self, files: PageFiles, max_bytes: int) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.total_bytes = 0
        self.evicted_pages = 0
        self.evicted_bytes = 0
        for path, st in sorted(files.iter_pages(), key=lambda item: item[1].st_mtime):
            self._lru[path] = st.st_size
            self.total_bytes += st.st_size

    def __len__(self) -> int:
        return len(self._lru)

    def touch(self, path: str) -> None:
        with self._lock:
            if path in self._lru:
                self._lru.move_to_end(path)

    def added(self, path: str, size: int) -> None:
        """Record a page file that just became visible, then evict down to the bound."""
        victims: list[tuple[str, int]] = []
        with self._lock:
            self.total_bytes += size - self._lru.pop(path, 0)
            self._lru[path] = size
            while self.max_bytes and self.total_bytes > self.max_bytes and len(self._lru) > 1:
                victim, vsize = self._lru.popitem(last=False)
                self.total_bytes -= vsize
                victims.append((victim, vsize))
        for victim, vsize in victims:
            try:
                os.unlink(victim)
            except FileNotFoundError:
                pass
            with self._lock:
                self.evicted_pages += 1
                self.evicted_bytes += vsize
        if victims:
            log.debug("nixl: evicted %d page files to stay under %d bytes", len(victims), self.max_bytes)

    def removed(self, path: str) -> None:
        with self._lock:
            self.total_bytes -= self._lru.pop(path, 0)

    def reset(self) -> None:
        with self._lock:
            self._lru.clear()
            self.total_bytes = 0
