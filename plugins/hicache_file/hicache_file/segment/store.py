"""``SegmentStore``: the file backend's ``segment`` scheme. Pages are records appended to a few
large segment files per namespace, found through a journaled index that every process sharing
the directory keeps coherent (``namespace.py``); one ``preadv``/``pwritev`` moves many pages
straight between the host pool and a segment.

Compared with one file per page, a batch costs a handful of system calls instead of three per
page, ``exists`` is a dictionary lookup after one ``stat`` of the journal, and the size bound
reclaims whole segments, least recently used first.

Keys: a page is stored under ``page_key(hash)`` (model, page format and shard), identified by
the xxh3-128 of that key; each namespace has its own directory. A set of a key that is already
stored is a success without a rewrite (SGLang's ``HiCacheFile`` does the same): page keys name
their content. With an MLA model only the writer rank writes; the others answer True to a set.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import xxhash

from hicache_core.keys import storage_key
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_file.plugin import CAPABILITIES
from hicache_file.segment import threads
from hicache_file.segment.batch import ReadItem, WriteItem, in_page_cache, plan_reads, read_chunk, read_chunks
from hicache_file.segment.config import SegmentSettings, config_model
from hicache_file.segment.format import HEADER_SIZE
from hicache_file.segment.index import Segment
from hicache_file.segment.namespace import Namespace
from hicache_file.segment.pageio import PoolPages, tensor_bytes_view
from hicache_file.segment.threads import BatchThreads

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

#: Test hook: called in the middle of a batch's data write (after some bytes of its first
#: chunk reached the segment, before the rest). Used to SIGKILL a real writer mid-write.
MID_WRITE_HOOK: Callable[[], None] | None = None

Pieces = list[memoryview]
_xxh3_128 = xxhash.xxh3_128_intdigest


class SegmentStore(HiCacheStorage):
    """Pages in segment files under ``<path>/segments/<namespace>/``; see the module docstring.

    Extra-config keys: ``path`` (or ``file_storage_path``; env ``HICACHE_FILE_PATH`` or
    ``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR``), ``max_bytes``, ``max_pages`` (per namespace,
    least recently used segments reclaimed), ``fsync``, ``io_threads``, and the tuning keys
    ``segment_bytes``, ``chunk_bytes``, ``verify`` (``always``/``first``), ``max_open_segments``.
    """

    contract_version = "1.0"
    capabilities = CAPABILITIES
    #: The extra-config schema the controller checks an attach against (``config.config_model``).
    config_model: ClassVar[type] = config_model()

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self.settings = SegmentSettings.from_extra(self.config.extra())
        self.is_writer = self.config.is_writer_rank
        self.root = self.settings.path
        try:
            os.makedirs(os.path.join(self.root, "segments"), exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"file backend (segment): cannot create {self.root!r}/segments: {exc}; set 'path' "
                "(or HICACHE_FILE_PATH) to a writable directory"
            ) from exc
        self._lock = threading.Lock()
        self._namespaces: dict[str, Namespace] = {}
        self._pages: PoolPages | None = None
        self._stats: Counter[str] = Counter()
        self._threads = BatchThreads(self.settings.io_threads)
        self._suffix: tuple[str, str | None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._pages = PoolPages(mem_pool_host)
        self._ns()  # open (and recover) the pool's namespace now, not on the first batch

    def close(self) -> None:
        with self._lock:
            namespaces, self._namespaces = list(self._namespaces.values()), {}
        self._threads.close()
        for ns in namespaces:
            ns.close()

    def health_check(self) -> None:
        ns = self._ns()
        if not os.path.isdir(ns.dir):
            raise HiCacheError(f"file backend (segment): directory {ns.dir!r} is gone")
        if self.is_writer and not os.access(ns.dir, os.W_OK | os.X_OK):
            raise HiCacheError(f"file backend (segment): directory {ns.dir!r} is not writable")

    def get_stats(self) -> dict[str, Any]:
        ns = self._ns()
        with ns.lock:
            stats: dict[str, Any] = dict(self._stats)
            stats.update(ns.stats)
            stats.update(
                pages=len(ns.index), bytes=ns.index.total_bytes, segments=len(ns.index.by_id),
                journal_bytes=ns.journal.size(), torn_journal_records=ns.journal.torn,
                max_bytes=self.settings.max_bytes, max_pages=self.settings.max_pages,
            )
        for name in ("hits", "misses", "corrupt", "wrong_size", "writes", "write_errors", "evictions", "unchanged"):
            stats.setdefault(name, 0)
        stats["path"] = ns.dir
        stats["scheme"] = "segment"
        return stats

    def _ns(self) -> Namespace:
        name = self.namespace
        ns = self._namespaces.get(name)
        if ns is None:
            with self._lock:
                ns = self._namespaces.get(name)
                if ns is None:
                    ns = Namespace(self.root, name, self.settings, self.is_writer)
                    self._namespaces[name] = ns
        return ns

    def _hashes(self, keys: Sequence[str]) -> list[int]:
        """The 128-bit identity of each key's ``page_key`` (``format.key_hash``)."""
        ns = self.namespace
        cached = self._suffix
        if cached is None or cached[0] != ns:
            # page_key(hash) is hash + a suffix; checked once, then the suffix is appended.
            tail = storage_key("", ns)
            cached = self._suffix = (ns, tail if storage_key("k", ns) == "k" + tail else None)
        suffix = cached[1]
        if suffix is None:
            return [_xxh3_128(storage_key(k, ns).encode()) for k in keys]
        return list(map(_xxh3_128, [(k + suffix).encode() for k in keys]))

    def _merge(self, stats: Counter[str]) -> None:
        with self._lock:
            self._stats.update(stats)

    # ------------------------------------------------------------------ reading
    def _read(self, ns: Namespace, hashes: list[int], dests: list[Pieces | None], want: int | None) -> list[bool]:
        """Read each key's page into its pieces; ``want``: the length every page must have
        (None: the length of each destination)."""
        out = [False] * len(hashes)
        ns.refresh()
        with ns.lock:
            items, misses, wrong = plan_reads(ns.index, hashes, dests, want)
            held: dict[int, tuple[Segment, int]] = {}
            for it in items:
                seg = it.seg
                prev = held.get(seg.slot)
                held[seg.slot] = (seg, prev[1] + 1 if prev else 1)
            for slot, (seg, count) in list(held.items()):
                if ns.acquire(seg) < 0:
                    del held[slot]
                else:
                    seg.users += count - 1
            if len(held) != len({it.seg.slot for it in items}):
                gone = [it for it in items if it.seg.slot not in held]
                misses += len(gone)
                items = [it for it in items if it.seg.slot in held]
        bad: list[ReadItem] = []
        try:
            if items:
                verify_all = self.settings.verify == "always"
                run_bytes = self._threads.run_bytes(items, self.settings.chunk_bytes)
                chunks = read_chunks(items, self.settings.chunk_bytes, run_bytes, verify_all)
                # From the page cache, runs are read side by side; from the disk, one after the
                # other by one thread: two threads' runs of one file, interleaved, defeat the
                # kernel's readahead (about 15 % slower cold reads here).
                page_bytes = items[0].length
                if threads.parallel(page_bytes) and len(chunks) > 1 and not in_page_cache(chunks[0]):
                    page_bytes = 0
                for failed in self._threads.run(chunks, lambda c: read_chunk(c, verify_all), page_bytes):
                    bad.extend(failed)
        finally:
            with ns.lock:
                bad_ids = {id(it) for it in bad}
                good = [it for it in items if id(it) not in bad_ids]
                for it in good:
                    out[it.i] = True
                ns.touch({it.seg.slot: it.seg for it in good}.values())
                for it in bad:
                    ns.index.forget_if_at(it.key, it.seg, it.offset)
                if self.settings.verify == "first":
                    for it in good:
                        if not it.checked:
                            ns.index.mark_checked(it.key)
                for seg, count in held.values():
                    for _ in range(count):
                        ns.release(seg)
        stats: Counter[str] = Counter(
            hits=len(items) - len(bad), misses=misses, wrong_size=wrong, corrupt=len(bad),
            bytes_read=sum(it.length for it in items) - sum(it.length for it in bad),
        )
        self._merge(stats)
        return out

    # ------------------------------------------------------------------ writing
    def _write(self, ns: Namespace, hashes: list[int], sources: list[Pieces], lengths: list[int]) -> list[bool]:
        """Store each page (skipping keys already stored); one bool per key."""
        n = len(hashes)
        if not self.is_writer:
            return [True] * n
        out = [False] * n
        stats: Counter[str] = Counter()
        ns.refresh()
        todo: dict[int, list[WriteItem]] = {}
        first: dict[int, int] = {}
        same: list[tuple[int, int]] = []
        with ns.lock:
            entries = ns.index.entries
            stored: dict[int, Segment] = {}
            for i, key in enumerate(hashes):
                if key in entries:
                    out[i] = True
                    stats["unchanged"] += 1
                    where = ns.index.locate(key)
                    if where is not None:
                        stored[where[0].slot] = where[0]
                elif key in first:
                    same.append((i, first[key]))
                else:
                    first[key] = i
                    todo.setdefault(lengths[i], []).append((i, key, sources[i]))
            ns.touch(stored.values())  # a page offered again is in use: its segment is recent
        for length, group in todo.items():
            retry: list[WriteItem] = []
            for i, ok in self._write_group(ns, group, length, stats):
                out[i] = ok
                if not ok:
                    retry.append(next(item for item in group if item[0] == i))
            if retry:  # a segment reclaimed under the write (another process's clear or bound): once more
                for i, ok in self._write_group(ns, retry, length, stats):
                    out[i] = ok
        for i, j in same:
            out[i] = out[j]
        self._merge(stats)
        return out

    def _write_group(self, ns: Namespace, group: list[WriteItem], length: int, stats: Counter[str]) -> list[tuple[int, bool]]:
        """Write pages of one length: reserve runs in the active segment, write them, journal them."""
        record = HEADER_SIZE + length
        runs: list[tuple[Segment, int, list[WriteItem]]] = []
        with ns.lock:
            pos = 0
            while pos < len(group):
                seg, offset, count = ns.reserve(record, len(group) - pos)
                runs.append((seg, offset, group[pos : pos + count]))
                pos += count
        per_chunk = max(1, self.settings.chunk_bytes // record)
        jobs = [
            (seg, offset + k * record, run[k : k + per_chunk])
            for seg, offset, run in runs
            for k in range(0, len(run), per_chunk)
        ]
        results = self._threads.write(jobs, length, MID_WRITE_HOOK)
        written: list[tuple[int, Segment, int, int]] = []
        written_at: list[int] = []
        failed: list[tuple[int, Segment, int, int]] = []
        out: list[tuple[int, bool]] = []
        for (seg, offset, items), ok in zip(jobs, results):
            for k, (i, key, _) in enumerate(items):
                put = (key, seg, offset + k * record, length)
                if ok:
                    written.append(put)
                    written_at.append(i)
                else:
                    failed.append(put)
                    out.append((i, False))
        if failed:
            stats["write_errors"] += len(failed)
            ns.abandon(failed)
        if written:
            if self.settings.fsync:
                for seg in {id(p[1]): p[1] for p in written}.values():
                    os.fdatasync(seg.fd)
            oks = ns.commit(written)
            out.extend(zip(written_at, oks))
            stats["writes"] += sum(oks)
            stats["bytes_written"] += length * sum(oks)
        return out

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Read each page straight into the host pool; one bool per key (False: miss or bad page).

        A page reported False because its record failed a check may have had its destination
        slot overwritten; such slots hold no meaning. A miss leaves its slot alone.
        """
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pages = self._pool_pages()
        dests: list[Pieces | None] = list(pages.views(pool.indices_to_pages(host_indices)))
        return self._read(self._ns(), self._hashes(keys), dests, pages.page_bytes)

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Write each host-pool page straight from its memory; one bool per key."""
        pool = self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pages = self._pool_pages()
        sources = pages.views(pool.indices_to_pages(host_indices))
        return self._write(self._ns(), self._hashes(keys), sources, [pages.page_bytes] * len(keys))

    def _pool_pages(self) -> PoolPages:
        pages = self._pages
        if pages is None:
            raise HiCacheError("file backend (segment): no host pool registered")
        return pages

    # ------------------------------------------------------------------ flat pages (legacy)
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        """The page under ``key`` (read into ``target_location`` when that is a tensor)."""
        return self.batch_get([key], [target_location])[0]

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        ns = self._ns()
        hashes = self._hashes(keys)
        ns.refresh()
        targets: list[torch.Tensor | None] = []
        staged: list[tuple[int, torch.Tensor]] = []
        with ns.lock:
            found = [ns.index.locate(h) for h in hashes]
        for i, (loc, where) in enumerate(zip(locs, found)):
            if not isinstance(loc, torch.Tensor):
                targets.append(self._new_page(where[1]) if where is not None else None)
            elif loc.device.type != "cpu" or not loc.is_contiguous():
                stage = torch.empty(loc.numel() * loc.element_size(), dtype=torch.uint8)
                staged.append((i, loc))
                targets.append(stage)
            else:
                targets.append(loc)
        dests: list[Pieces | None] = [[tensor_bytes_view(t)] if t is not None else None for t in targets]
        ok = self._read(ns, hashes, dests, None)
        for i, loc in staged:
            staging = targets[i]
            if ok[i] and staging is not None:
                loc.view(-1).view(torch.uint8).copy_(staging)
            targets[i] = loc
        return [t if good else None for t, good in zip(targets, ok)]

    def _new_page(self, nbytes: int) -> torch.Tensor:
        pool = self.mem_pool_host
        dtype = pool.dtype if pool is not None and nbytes % pool.dtype.itemsize == 0 else torch.uint8
        return torch.empty(nbytes // dtype.itemsize, dtype=dtype)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        """Store each flat page tensor; True only when every page is stored."""
        if values is None:
            return False
        vals = list(values)
        if len(vals) != len(keys) or not all(isinstance(v, torch.Tensor) for v in vals):
            return False
        raws = [v.detach().to("cpu").contiguous() for v in vals]
        sources = [[tensor_bytes_view(r)] for r in raws]
        lengths = [r.numel() * r.element_size() for r in raws]
        return all(self._write(self._ns(), self._hashes(keys), sources, lengths))

    def exists(self, key: str) -> bool:
        return self.exists_many([key])[0]

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        """One ``stat`` of the journal (to see other processes' writes), then index lookups."""
        ns = self._ns()
        hashes = self._hashes(keys)
        ns.refresh()
        entries = ns.index.entries
        return [h in entries for h in hashes]

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        for i, hit in enumerate(self.exists_many(keys)):
            if not hit:
                return i
        return len(keys)

    def delete(self, key: str) -> bool:
        ns = self._ns()
        ns.delete(self._hashes([key])[0])
        return True

    def clear(self) -> None:
        """Remove every page of this namespace (other models, formats and ranks keep theirs)."""
        self._ns().clear()

    def __repr__(self) -> str:
        return f"SegmentStore({self.root!r}, namespace={self.namespace!r})"
