"""Eviction of a rank's tiers: L1 rows (``write_back`` writes them to L2 first) and L2 pages.

An L2 page whose backup is in flight, or that the write policy still has to back up, may not
go yet: a full L2 waits for backups (back-pressure, bounded by ``backup_wait_s``) so that
write-through really writes every page through instead of dropping what L3 could not take yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hicache_core.controller import StorageController
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.node.device_pool import DevicePool
from hicache_core.node.results import RankCounters
from hicache_core.node.tiers import TierIndex


class RankEviction:
    """Mixin of ``CacheRank``; it supplies the attributes and helpers declared here."""

    host_pool: HostKVPool
    device: DevicePool
    controller: StorageController
    page_size: int
    backup_wait_s: float
    l1: TierIndex
    l2: TierIndex
    counters: RankCounters

    if TYPE_CHECKING:  # provided by CacheRank and RankBackups
        def drain_backups(self) -> int: ...
        def _issue_backups(self, hashes: list[str]) -> None: ...
        def _needs_backup(self, h: str) -> bool: ...
        def _wait_backup_done(self, deadline: float) -> bool: ...
        def _insert_l2(self, hashes: Sequence[str], rows: torch.Tensor, backups: list[str]) -> int: ...

    # ------------------------------------------------------------------ eviction
    def _alloc_device(self, want: int) -> list[int]:
        """Up to ``want`` free L1 rows, evicting LRU pages (``write_back``: to L2 first)."""
        slots: list[int] = []
        while len(slots) < want:
            slot = self.device.alloc()
            if slot is None:
                break
            slots.append(slot)
        short = want - len(slots)
        if short <= 0:
            return slots
        victims = [(h, entry.slot) for h, entry in self.l1.evictable(short)]
        if victims and self.controller.write_policy == "write_back":
            down = [(h, s) for h, s in victims if h not in self.l2]
            if down:
                backups: list[str] = []
                self._insert_l2([h for h, _ in down], self.device.read([s for _, s in down]), backups)
                self._issue_backups(backups)
        for h, slot in victims:
            self.l1.remove(h)
            slots.append(slot)
        self.counters.evicted_device_pages += len(victims)
        return slots

    def _make_host_room(self, pages: int) -> None:
        """Evict LRU L2 pages until ``pages`` are free (or nothing more may go).

        Pages whose backup is in flight may not go; when they block the room, wait for
        backups to finish (up to ``backup_wait_s``): back-pressure, so that write-through
        really writes every page through instead of dropping what L3 could not take yet.
        """
        self.drain_backups()
        deadline = time.monotonic() + self.backup_wait_s
        while True:
            short = pages - self.host_pool.available_size() // self.page_size
            if short <= 0:
                return
            backups: list[str] = []
            freed: list[int] = []
            for h, entry in self.l2.evictable(short):
                if self._needs_backup(h) and self.controller.should_backup("evict"):
                    entry.evict_when_backed_up = True  # freed once its backup is done
                    backups.append(h)
                    continue
                self.l2.remove(h)
                freed.append(entry.slot)
                short -= 1
            if freed:
                self.host_pool.free(self.host_pool.pages_to_indices(freed))
                self.counters.evicted_host_pages += len(freed)
            self._issue_backups(backups)
            if short <= 0 or not self._wait_backup_done(deadline):
                return
