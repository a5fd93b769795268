"""Scheme ``sglang``: SGLang 0.5.23 ``HiCacheFile``'s page files, so one folder serves both engines.

Layout, exactly SGLang's: ``<path>/<key><suffix>.bin``, the page's raw bytes (the host pool's
flat page, ``hicache_core.memory.pages``), no header. ``<suffix>`` is
``config.namespace_suffix()`` (model, TP rank and size for MHA, PP, attention CP, DCP), and
a v2 sidecar page is SGLang's ``<key>.<pool><suffix>.bin`` (Mamba states use the TP suffix
even for MLA models, as SGLang does). ``path`` may be given as SGLang's
``file_storage_path``.

What the raw files cannot say (dtype, layout) is kept in a format manifest beside them
(``hicache_file.manifest``, which states the rule): a page of another format is never served.
A file of another size is a miss (``wrong_size``). Without a header there is no checksum: a
bit flipped on disk is not detected, as in SGLang; writes are still atomic (a temporary file
renamed into place), so a killed writer never leaves a torn page under a page's name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hicache_core.memory.pages import page_format
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
    tmp_is_stale,
    tmp_tag,
    unlink_quietly,
)
from hicache_file.lru import PageIndex
from hicache_file.manifest import FormatGuard

log = logging.getLogger("hicache_file.store")

TMP_PREFIX = ".hicache-"
TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 3600
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_NAME_MAX = 255
#: SGLang keys Mamba states by the TP suffix even where MLA KV is shared across ranks.
_TP_SHARDED_POOLS = ("mamba",)


def tp_suffix(config: HiCacheStorageConfig) -> str:
    """SGLang's ``tp_config_suffix``: the MHA form of the suffix, whatever the model kind."""
    model = "-".join(config.model_name.split("/")) if config.model_name else ""
    suffix = f"_{model}_{config.tp_rank}_{config.tp_size}{config.shard_suffix()}"
    if config.dcp_size > 1:
        suffix += f"_tp{config.tp_size}_dcp{config.dcp_rank}_{config.dcp_size}_page{config.logical_page_size}"
    return suffix


class SGLangFileStore(FileSchemeBase):
    """Reads and writes SGLang ``HiCacheFile``'s files; see the module docstring."""

    scheme = "sglang"

    def __init__(self, config: Any | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self.suffix = self.config.namespace_suffix()
        self.tp_suffix = tp_suffix(self.config)
        self.namespace_dir = self.root
        self._guard = FormatGuard(self.root, self.settings.sglang_layout, self.settings.sglang_dtype)
        self._index = PageIndex(self.settings.max_bytes, self.settings.max_pages)
        self._warned: set[str] = set()
        if self.is_writer:
            self._scan()

    # ------------------------------------------------------------------ names and formats
    def _suffix_for(self, pool: str) -> str:
        return self.tp_suffix if pool in _TP_SHARDED_POOLS else self.suffix

    def _name(self, key: str) -> str:
        """SGLang's file name of ``key`` (a hash of it for keys no file name can hold)."""
        pool = key.rsplit(".", 1)[1] if "." in key else KV
        full = key + self._suffix_for(pool)
        if _SAFE_KEY.fullmatch(key) and len(full) + 4 <= _NAME_MAX:
            return full + ".bin"
        return "h" + hashlib.sha256(full.encode()).hexdigest() + self._suffix_for(KV) + ".bin"

    def _sidecar_keys(self, pool: str, keys: Sequence[str]) -> list[str]:
        return [f"{k}.{pool}" for k in keys]  # SGLang's _log_key

    def _refusal(self, pool: str) -> tuple[str, str] | None:
        """None when this store may serve ``pool``'s pages; else ``(counter, why)``, logged once."""
        pages = self._pools.get(pool)
        if pages is None:
            answer: tuple[str, str] | None = (
                "format_unknown",
                "no host pool registered: the sglang scheme serves pages only to a registered pool "
                "whose page format it can check against the folder's manifest",
            )
        else:
            answer = self._guard.verdict(pool, self._suffix_for(pool), page_format(pages.pool))
        if answer is not None and answer[1] not in self._warned:
            self._warned.add(answer[1])
            log.warning("file backend (scheme sglang): %s", answer[1])
        return answer

    def on_host_pools_registered(self) -> None:
        """Settle each registered pool's format against the folder now (a fresh folder's manifests
        are written here), so pages SGLang adds later fall under them."""
        for name in list(self._pools):
            self._refusal(name)

    # ------------------------------------------------------------------ startup scan
    def _scan(self) -> None:
        """Index this rank's page files (LRU by mtime) and drop dead writers' temporary files."""
        owned = (f"{self.suffix}.bin", f"{self.tp_suffix}.bin")
        entries: list[tuple[int, str, int]] = []
        now = time.time()
        removed = 0
        with os.scandir(self.root) as listing:
            for entry in listing:
                name = entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                    pid_text = name[len(TMP_PREFIX) :].split("-", 1)[0]
                    if tmp_is_stale(pid_text, st.st_mtime, now, STALE_TMP_SECONDS):
                        unlink_quietly(entry.path)
                        removed += 1
                elif name.endswith(owned) and not name.startswith("."):
                    entries.append((st.st_mtime_ns, name, st.st_size))
        with self._lock:
            self._index.load(entries)
            self._stats["stale_tmp_removed"] += removed
            self._stats["evictions"] += self._evict_locked()

    def _evict_locked(self) -> int:
        victims = self._index.victims()
        for name in victims:
            unlink_quietly(os.path.join(self.root, name))
        return len(victims)

    # ------------------------------------------------------------------ reading
    def _read_pages(self, items: list[Item], expected: int, pool: str) -> list[bool]:
        refused = self._refusal(pool)
        if refused is not None:
            self._merge(Counter({refused[0]: len(items)}))
            return [False] * len(items)
        stats: Counter[str] = Counter()
        hits: list[str] = []
        out: list[bool] = []
        for key, views in items:
            name = self._name(key)
            ok = self._read_into(name, views, expected, stats)
            out.append(ok)
            if ok:
                hits.append(name)
        stats["hits"] += len(hits)
        stats["bytes_read"] += len(hits) * expected
        with self._lock:
            for name in hits:
                self._index.touch(name)
            self._stats.update(stats)
        if self._index.bounded:
            for name in hits:  # recency that a restart rebuilds from mtimes
                try:
                    os.utime(os.path.join(self.root, name))
                except OSError:
                    pass
        return out

    def _read_into(self, name: str, views: list[memoryview], expected: int, stats: Counter[str]) -> bool:
        path = os.path.join(self.root, name)
        fd = open_page(path, stats)
        if fd is None:
            return False
        try:
            n = read_whole(fd, [*views, GUARD])  # the guard byte tells a file that is too long
        except OSError as exc:
            stats["read_errors"] += 1
            log.warning("file backend: cannot read %s: %s", path, exc)
            return False
        finally:
            os.close(fd)
        if n != expected:
            stats["wrong_size"] += 1
            log.debug("file backend: %s is not a page of %d bytes; not served", path, expected)
            return False
        return True

    # ------------------------------------------------------------------ writing
    def _write_pages(self, items: list[Item], pool: str) -> list[bool]:
        if not self.is_writer and pool == KV:
            # MLA: every rank holds the same KV and the writer rank stores it.
            self._merge(Counter(skipped_not_writer=len(items)))
            return [True] * len(items)
        refused = self._refusal(pool)
        if refused is not None:
            self._merge(Counter({refused[0]: len(items), "write_errors": len(items)}))
            return [False] * len(items)
        stats: Counter[str] = Counter()
        out: list[bool] = []
        for key, pieces in items:
            out.append(self._write_one(self._name(key), pieces, stats))
        if self.settings.fsync and stats["writes"]:
            fsync_dir(self.root)  # the renames are durable only once the directory is
        self._merge(stats)
        return out

    def _write_one(self, name: str, pieces: list[Any], stats: Counter[str]) -> bool:
        length = sum(memoryview(p).nbytes for p in pieces)
        if not self._index.fits(length):
            stats["write_errors"] += 1
            stats["too_large"] += 1
            return False
        tmp = os.path.join(self.root, f"{TMP_PREFIX}{tmp_tag()}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, OPEN_WRITE, 0o644)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot create %s: %s", tmp, exc)
            return False
        try:
            n = pwritev_all(fd, list(pieces), 0)
            if n != length:
                raise OSError(f"short write: {n} of {length} bytes")
            if self.settings.fsync:
                os.fsync(fd)
        except OSError as exc:
            stats["write_errors"] += 1
            log.warning("file backend: cannot write %s: %s", tmp, exc)
            os.close(fd)
            unlink_quietly(tmp)
            return False
        os.close(fd)
        with self._lock:  # rename and index together keep the index equal to the folder
            try:
                os.rename(tmp, os.path.join(self.root, name))
            except OSError as exc:
                stats["write_errors"] += 1
                log.warning("file backend: cannot rename %s: %s", tmp, exc)
                unlink_quietly(tmp)
                return False
            self._index.put(name, length)
            stats["evictions"] += self._evict_locked()
        stats["writes"] += 1
        stats["bytes_written"] += length
        return True

    # ------------------------------------------------------------------ existence, removal
    def _exists(self, key: str, expected: int | None, pool: str) -> bool:
        if self._refusal(pool) is not None:  # pages this pool may not read do not exist for it
            return False
        try:
            size = os.stat(os.path.join(self.root, self._name(key))).st_size
        except OSError:
            return False
        return size == expected if expected is not None else True

    def _stored_length(self, key: str) -> int | None:
        return None  # raw files: without a pool to check the format, nothing is served

    def delete(self, key: str) -> bool:
        name = self._name(key)
        with self._lock:
            try:
                os.unlink(os.path.join(self.root, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("file backend: cannot delete %s: %s", name, exc)
                return False
            self._index.remove(name)
        return True

    def clear(self) -> None:
        """Remove this rank's pages (other models and ranks, and the manifests, stay)."""
        owned = (f"{self.suffix}.bin", f"{self.tp_suffix}.bin")
        with self._lock:
            with os.scandir(self.root) as listing:
                for entry in listing:
                    if entry.name.endswith(owned) and not entry.name.startswith("."):
                        unlink_quietly(entry.path)
            self._index.clear()

    def health_check(self) -> None:
        if not os.path.isdir(self.root):
            raise HiCacheError(f"file backend: page directory {self.root!r} is gone")
        if self.is_writer and not os.access(self.root, os.W_OK | os.X_OK):
            raise HiCacheError(f"file backend: page directory {self.root!r} is not writable")

    def _more_stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pages": len(self._index), "bytes": self._index.total_bytes, "max_bytes": self._index.max_bytes,
                "max_pages": self._index.max_pages, "path": self.root, "suffix": self.suffix,
                "format_unknown": self._stats.get("format_unknown", 0),
            }

    def __repr__(self) -> str:
        return f"SGLangFileStore({self.root!r}, suffix={self.suffix!r}, pages={len(self._index)})"
