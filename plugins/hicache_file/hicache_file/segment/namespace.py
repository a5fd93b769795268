"""One namespace's directory: segment files, the journal, and this process's index of them.

Directory ``<path>/segments/<namespace>/``::

    index.log            the journal (format.py), shared by every process
    index.lock           its flock
    <segment id>.seg     page records; the id's high bits are the creating process's pid

Rules that keep every served page whole and right:

- A segment is appended to only by the process that created it, at offsets it hands out once
  (a bump pointer), so a journaled record's bytes are never rewritten.
- A page's journal record is appended only after its bytes were written (and, with ``fsync``,
  flushed): a writer killed before that leaves unjournaled bytes nobody reads.
- A segment is dropped by journaling the drop, then unlinking the file, both under the
  exclusive lock; a writer checks, under the same lock, that its segment still has a link
  before journaling pages in it (so it never journals into a reclaimed file).
- Every read checks the record's header (key, segment, offset, length) and, per ``verify``,
  the page checksum: whatever went wrong, the answer is a miss, never a wrong page.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable

from hicache_file.fileio import pid_alive
from hicache_file.segment.config import SegmentSettings
from hicache_file.segment.format import (
    JOURNAL_SIZE,
    KIND_CLEAR,
    KIND_DELETE,
    KIND_DROP,
    KIND_PUT,
    journal_record,
)
from hicache_file.segment.index import Segment, SegmentIndex
from hicache_file.segment.journal import Journal

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})\.seg$")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A segment nobody journaled is removed once its creator is dead, or after this long.
ORPHAN_SECONDS = 3600.0
#: A hit refreshes a segment file's mtime (recency for other processes and restarts) at most
#: this often.
TOUCH_SECONDS = 1.0
#: The journal is compacted once it is this many times larger than its live records (and
#: at least ``COMPACT_MIN_BYTES``).
COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 1 << 20


def namespace_dirname(namespace: str) -> str:
    """A directory name for a namespace (already ``[A-Za-z0-9._-]`` in the hc1 schema)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", namespace).lstrip(".") or "default"
    if safe != namespace or len(safe) > 200:
        import hashlib

        safe = f"{safe[:180]}~{hashlib.sha256(namespace.encode()).hexdigest()[:16]}"
    return safe


def _linked(seg: Segment) -> bool:
    """Whether the segment's file still has a name (reclaimed segments are unlinked)."""
    try:
        return seg.fd >= 0 and os.fstat(seg.fd).st_nlink > 0
    except OSError:
        return False


class Namespace:
    """The pages of one namespace, as seen by this process. Thread-safe."""

    def __init__(self, root: str, namespace: str, settings: SegmentSettings, writer: bool) -> None:
        self.settings = settings
        self.namespace = namespace
        self.dir = os.path.join(root, "segments", namespace_dirname(namespace))
        os.makedirs(self.dir, exist_ok=True)
        self.lock = threading.RLock()
        self.journal = Journal(self.dir, settings.fsync)
        self.index = SegmentIndex()
        self.stats: Counter[str] = Counter()
        self.active: Segment | None = None
        self._pid = os.getpid()
        self._open_count = 0
        with self.lock, self.journal.locked(exclusive=True):
            self.journal.ensure()
            self._catch_up()
            self._load_recency()
            if writer:
                self._remove_orphans()
                self._evict()

    # ------------------------------------------------------------------ journal
    def refresh(self) -> None:
        """Apply what other processes journaled since the last look (one ``stat`` when nothing)."""
        if self.journal.changed():
            with self.lock, self.journal.locked(exclusive=False):
                self._catch_up()

    def _catch_up(self) -> None:
        """Apply new journal records (lock and a flock held)."""
        reset, records = self.journal.read_new()
        index = self.index
        now = time.time()
        if reset:
            old = index.restart()
            carried = {seg_id for kind, _, seg_id, _, _ in records if kind == KIND_PUT}
            for seg in old.values():
                # Own segments not journaled yet (writes in flight) stay; a reclaimed one fails
                # the link check at commit.
                if seg.id in carried or (seg.owned and not seg.doomed and _linked(seg)):
                    index.adopt(seg)
                else:
                    self._doom(seg)
        for kind, length, seg_id, offset, key in records:
            if kind == KIND_PUT:
                target = index.segment(seg_id, now)
                if target is not None:
                    index.put(key, target, offset, length, now, checked=False)
            elif kind == KIND_DELETE:
                index.delete(key)
            elif kind == KIND_DROP:
                dropped = index.drop(seg_id)
                if dropped is not None:
                    self._doom(dropped)
            elif kind == KIND_CLEAR:
                for seg in index.clear():
                    self._doom(seg)

    def _doom(self, seg: Segment) -> None:
        """A segment this process must stop using: close its file once no reader holds it."""
        seg.doomed = True
        if seg is self.active:
            self.active = None
        if seg.users == 0:
            self._close_fd(seg)

    # ------------------------------------------------------------------ segment files
    def path_of(self, seg: Segment) -> str:
        return os.path.join(self.dir, seg.name)

    def acquire(self, seg: Segment) -> int:
        """An open descriptor of ``seg`` for one I/O (lock held); -1 when the file is gone."""
        if seg.fd < 0:
            try:
                seg.fd = os.open(self.path_of(seg), os.O_RDONLY | _CLOEXEC)
            except FileNotFoundError:
                self._vanished(seg)
                return -1
            self._open_count += 1
            if self._open_count > self.settings.max_open_segments:
                self._close_idle(keep=seg)
        seg.users += 1
        return seg.fd

    def release(self, seg: Segment) -> None:
        seg.users -= 1
        if seg.doomed and seg.users == 0:
            self._close_fd(seg)

    def _close_fd(self, seg: Segment) -> None:
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
            self._open_count -= 1

    def _close_idle(self, keep: Segment) -> None:
        for seg in sorted(self.index.by_id.values(), key=lambda s: s.last_used):
            if self._open_count <= self.settings.max_open_segments // 2:
                break
            if seg is not keep and seg is not self.active and seg.users == 0:
                self._close_fd(seg)

    def _vanished(self, seg: Segment) -> None:
        """A segment whose file is gone (removed by hand, or dropped in a way not seen yet)."""
        self.stats["segments_vanished"] += 1
        dropped = self.index.drop(seg.id)
        if dropped is not None:
            self._doom(dropped)

    def touch(self, segs: Iterable[Segment]) -> None:
        """Record a hit in each segment (lock held): recency here, and now and then its mtime."""
        now = time.time()
        for seg in segs:
            seg.last_used = now
            if now - seg.touched > TOUCH_SECONDS and seg.fd >= 0:
                seg.touched = now
                try:
                    os.utime(seg.fd)
                except OSError:
                    pass

    # ------------------------------------------------------------------ writing
    def reserve(self, record_bytes: int, count: int) -> tuple[Segment, int, int]:
        """Room for up to ``count`` records of ``record_bytes`` in this process's active segment:
        ``(segment, offset, records)``, at least one record. Lock held by the caller."""
        if os.getpid() != self._pid:  # a forked child never appends to its parent's segment
            self._pid, self.active = os.getpid(), None
        target = self._segment_target(record_bytes)
        seg = self.active
        if seg is None or seg.doomed or (seg.alloc and seg.alloc + record_bytes > target) or not _linked(seg):
            seg = self._new_segment(target)
        fit = max(1, (target - seg.alloc) // record_bytes)
        n = min(count, fit)
        offset = seg.alloc
        seg.alloc += n * record_bytes
        seg.users += n  # one hold per record; commit or abandon gives each back
        return seg, offset, n

    def _segment_target(self, record_bytes: int) -> int:
        s = self.settings
        target = s.segment_bytes
        if s.max_bytes is not None:
            target = min(target, s.max_bytes // 16)
        if s.max_pages is not None:
            target = min(target, max(1, s.max_pages // 16) * record_bytes)
        return max(target, record_bytes)

    def _new_segment(self, target: int) -> Segment:
        pid = os.getpid() & ((1 << 24) - 1)
        while True:
            seg_id = (pid << 40) | random.getrandbits(40)
            if seg_id in self.index.by_id or seg_id in self.index.dropped:
                continue
            seg = Segment(seg_id, self.index.new_slot(), time.time())
            try:
                seg.fd = os.open(self.path_of(seg), os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
            except FileExistsError:
                continue
            break
        self._open_count += 1
        if self.settings.preallocate:
            try:
                os.posix_fallocate(seg.fd, 0, target)
            except OSError:
                pass  # not supported here, or no room: appends allocate as they go
        seg.owned = True
        self.index.adopt(seg)
        self.active = seg
        return seg

    def commit(self, puts: list[tuple[int, Segment, int, int]]) -> list[bool]:
        """Journal written pages ``(key, segment, offset, length)``; one bool per page.

        Each segment's ``users`` count taken by ``reserve`` is released here. A page whose
        segment was reclaimed meanwhile is not journaled (False).
        """
        segs = {id(seg): seg for _, seg, _, _ in puts}
        with self.lock, self.journal.locked(exclusive=True):
            try:
                self.journal.ensure()
                self._catch_up()
                alive = {}
                for seg_key, seg in segs.items():
                    ok = not seg.doomed and _linked(seg)
                    if not ok and seg is self.active:
                        self.active = None
                    alive[seg_key] = ok
                oks = [alive[id(seg)] for _, seg, _, _ in puts]
                payload = b"".join(
                    journal_record(KIND_PUT, length, seg.id, offset, key)
                    for (key, seg, offset, length), ok in zip(puts, oks) if ok
                )
                if payload:
                    self.journal.append(payload)
                    now = time.time()
                    for (key, seg, offset, length), ok in zip(puts, oks):
                        if ok:
                            self.index.put(key, seg, offset, length, now, checked=True)
                self._evict()
                self._maybe_compact()
            finally:
                for _, seg, _, _ in puts:
                    self.release(seg)
        return oks

    def abandon(self, puts: list[tuple[int, Segment, int, int]]) -> None:
        """Give back ``reserve``'s hold on segments whose write failed (nothing journaled)."""
        with self.lock:
            for _, seg, _, _ in puts:
                if seg is self.active:
                    self.active = None  # its tail may be half written: start a new one
                self.release(seg)

    def delete(self, key: int) -> None:
        with self.lock, self.journal.locked(exclusive=True):
            self.journal.ensure()
            self._catch_up()
            if key in self.index.entries:
                self.journal.append(journal_record(KIND_DELETE, key=key))
                self.index.delete(key)
                self._maybe_compact()

    def clear(self) -> None:
        """Drop every page of this namespace, for every process."""
        with self.lock, self.journal.locked(exclusive=True):
            self.journal.ensure()
            self._catch_up()
            self.journal.append(journal_record(KIND_CLEAR))
            for seg in self.index.clear():
                self._doom(seg)
            self._unlink_segments(name for name in os.listdir(self.dir) if name.endswith(SEGMENT_SUFFIX))
            self.journal.rewrite(b"")
            self.index.dropped.clear()

    # ------------------------------------------------------------------ size bound, cleanup
    def _evict(self) -> None:
        """Drop least recently used segments until the bounds hold (both locks held)."""
        s = self.settings
        if not self.index.over(s.max_bytes, s.max_pages):
            return
        victims = self.index.victims(s.max_bytes, s.max_pages, self._mtime)
        if not victims:
            return
        self.journal.append(b"".join(journal_record(KIND_DROP, segment=seg.id) for seg in victims))
        pages = 0
        for seg in victims:
            pages += seg.live
            self.index.drop(seg.id)
            self._doom(seg)
        self._unlink_segments(seg.name for seg in victims)
        self.stats["evicted_segments"] += len(victims)
        self.stats["evictions"] += pages

    def _mtime(self, seg: Segment) -> float:
        try:
            return os.stat(self.path_of(seg)).st_mtime
        except OSError:
            return 0.0

    def _unlink_segments(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("file backend (segment): cannot remove %s: %s", name, exc)

    def _maybe_compact(self) -> None:
        live = len(self.index.entries)
        size = self.journal.size()
        if size < COMPACT_MIN_BYTES or size < COMPACT_FACTOR * (live + 1) * JOURNAL_SIZE:
            return
        # Files of dropped segments whose unlink a killed evictor never did go first: once the
        # journal forgets the drop, nothing would say they are dead.
        self._unlink_segments(f"{seg_id:016x}{SEGMENT_SUFFIX}" for seg_id in self.index.dropped)
        payload = b"".join(
            journal_record(KIND_PUT, length, seg.id, offset, key)
            for key, seg, offset, length in self.index.live_records()
        )
        self.journal.rewrite(payload)
        self.index.dropped.clear()
        self.stats["compactions"] += 1

    def _load_recency(self) -> None:
        """Segments' recency from their files' mtimes (hits refresh them); gone files dropped."""
        for seg in list(self.index.by_id.values()):
            if seg.owned:
                continue
            try:
                seg.last_used = os.stat(self.path_of(seg)).st_mtime
            except FileNotFoundError:
                self._vanished(seg)

    def _remove_orphans(self) -> None:
        """Remove segment files nobody journaled whose creator is dead (or that are old)."""
        now = time.time()
        known = self.index.by_id
        for name in os.listdir(self.dir):
            m = _SEGMENT_NAME.match(name)
            if m is None:
                continue
            seg_id = int(m.group(1), 16)
            if seg_id in known and seg_id not in self.index.dropped:
                continue
            path = os.path.join(self.dir, name)
            try:
                age = now - os.stat(path).st_mtime
            except OSError:
                continue
            if seg_id in self.index.dropped or age > ORPHAN_SECONDS or not pid_alive(seg_id >> 40):
                self._unlink_segments([name])
                self.stats["orphans_removed"] += 1

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self.lock:
            for seg in list(self.index.by_id.values()):
                if seg.users == 0:
                    self._close_fd(seg)
                else:
                    seg.doomed = True
            self.active = None
            self.journal.close()
