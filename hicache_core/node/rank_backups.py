"""The L2 -> L3 half of a rank: issuing backups, applying their completions, re-syncing L3.

Backup completions arrive on the controller's thread and are queued, never applied there, so
the controller never waits on the rank's lock. A page is "stored" for one storage epoch of
the controller (``controller.storage_epoch``): every new backend instance (an attach, a
switch, the breaker's re-attach) starts a new epoch, because what the old one held may be
gone (a Mooncake master restart loses every object). After an epoch change the rank backs up
again every L2 page that its write policy would have backed up (``resync``), so L3 holes
left by a restart are filled instead of staying holes for good. Pages whose backup was not
stored (a failed call, a full store, a full queue) are swept again the same way, no sooner
than ``RETRY_AFTER_S`` later.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from hicache_core.controller import StorageController
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.node.results import RankCounters
from hicache_core.node.tiers import TierIndex

#: Pages queued per re-sync sweep (the rest follow on later requests: never a burst).
RESYNC_CHUNK_PAGES = 1024
#: After a backup that did not store every page (a failed call, a full store, a full queue),
#: the pages are tried again by a sweep no sooner than this.
RETRY_AFTER_S = 1.0


class RankBackups:
    """Mixin of ``CacheRank``; it supplies the attributes declared here."""

    host_pool: HostKVPool
    controller: StorageController
    page_bytes: int
    l2: TierIndex
    counters: RankCounters
    _lock: threading.RLock
    _done: queue.SimpleQueue[tuple[list[str], int, list[bool]]]
    _inflight_pages: int
    _synced_epoch: int
    _resync_after: float

    @property
    def storage_epoch(self) -> int:
        return self.controller.storage_epoch

    def _needs_backup(self, h: str) -> bool:
        e = self.l2.get(h)
        return e is not None and e.stored_epoch != self.storage_epoch and e.backups == 0

    # ------------------------------------------------------------------ re-sync after a new epoch
    def resync(self) -> int:
        """Back up again the L2 pages the write policy keeps in L3 but the current epoch lacks.

        Runs on the request path (rank lock held) while the epoch is not yet synced, and once
        a retry of failed backups is due; queues at most ``RESYNC_CHUNK_PAGES`` per call.
        Returns how many pages it queued.
        """
        epoch = self.storage_epoch
        retry_due = self._resync_after > 0 and time.monotonic() >= self._resync_after
        if (epoch == self._synced_epoch and not retry_due) or not self.controller.attached:
            return 0
        if retry_due:
            self._resync_after = 0.0
        policy = self.controller.write_policy
        if policy == "write_back":  # pages go down on eviction; _make_host_room sees the new epoch
            self._synced_epoch = epoch
            return 0
        todo: list[str] = []
        pending = False
        for h, entry in self.l2.items():
            if entry.stored_epoch == epoch:
                continue
            if entry.backups:
                pending = True  # its backup (to an older epoch) is still running: next sweep
                continue
            if policy == "write_through_selective" and entry.hits < 2:
                continue
            todo.append(h)
            if len(todo) >= RESYNC_CHUNK_PAGES:
                pending = True
                break
        if not pending:
            self._synced_epoch = epoch
        if todo:
            self.counters.resync_pages += len(todo)
            self._issue_backups(todo)
        return len(todo)

    # ------------------------------------------------------------------ L2 -> L3
    def _issue_backups(self, hashes: list[str]) -> None:
        """Queue one backup call for ``hashes`` (L2 pages); completions come back via a queue."""
        todo: list[str] = []
        seen: set[str] = set()
        for h in hashes:
            entry = self.l2.get(h)
            if entry is None or h in seen or entry.backups:
                continue
            seen.add(h)
            todo.append(h)
        if not todo:
            return
        pages = []
        for h in todo:
            entry = self.l2.get(h)
            assert entry is not None
            entry.backups += 1
            pages.append(entry.slot)
        epoch = self.storage_epoch
        done = self._done
        self.counters.backup_pages_queued += len(todo)
        self._inflight_pages += len(todo)

        def on_done(results: list[bool]) -> None:
            done.put((todo, epoch, list(results)))

        self.controller.backup(todo, self.host_pool.pages_to_indices(pages), on_done=on_done)

    def drain_backups(self) -> int:
        """Apply finished backups: unpin pages, mark them stored, free write-back evictions."""
        n = 0
        with self._lock:
            while True:
                try:
                    hashes, epoch, results = self._done.get_nowait()
                except queue.Empty:
                    break
                n += 1
                self._inflight_pages -= len(hashes)
                freed: list[int] = []
                for i, h in enumerate(hashes):
                    entry = self.l2.get(h)
                    if entry is None:
                        continue
                    entry.backups = max(0, entry.backups - 1)
                    ok = i < len(results) and bool(results[i])
                    if ok:
                        entry.stored_epoch = epoch
                        self.counters.bytes_stored += self.page_bytes
                    else:
                        self.counters.backup_pages_failed += 1
                        if not self._resync_after:  # sweep again, later: the page stays in L2 meanwhile
                            self._resync_after = time.monotonic() + RETRY_AFTER_S
                    if entry.evict_when_backed_up and entry.backups == 0 and entry.refs == 0:
                        self.l2.remove(h)
                        freed.append(entry.slot)
                if freed:
                    self.host_pool.free(self.host_pool.pages_to_indices(freed))
                    self.counters.evicted_host_pages += len(freed)
        return n

    def _wait_backup_done(self, deadline: float) -> bool:
        """Block until one backup completes (applied) or ``deadline``; False when none is pending."""
        if self._inflight_pages == 0:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            item = self._done.get(timeout=remaining)
        except queue.Empty:
            return False
        self._done.put(item)
        self.counters.backup_waits += 1
        return self.drain_backups() > 0

    @property
    def backup_pages_in_flight(self) -> int:
        return self._inflight_pages

    def wait_backups(self, timeout_s: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Wait until no backup is in flight (for tests and the end of a replay)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.drain_backups()
            with self._lock:
                if self._inflight_pages == 0:
                    return True
            sleep(0.02)
        return False
