"""One data-parallel rank of the reference node: L1, L2 and the storage controller (L3).

``CacheRank.process`` plays the cache side of an engine for one request:

1. match the longest cached prefix: L1 (device), then L2 (host), then L3 through
   ``controller.prefetch`` (its stop policy decides how long to wait);
2. verify every page loaded from L3 (in the host pool) and from L2 (in the device pool)
   against the bytes it must hold (``kvgen``); a mismatch is counted, the page dropped and
   the hit truncated there, so no wrong byte is ever served;
3. "compute" the pages that missed (bytes derived from the page hash) and insert them;
4. move pages down the tiers per the write policy: L1 -> L2 (``write_through``: on insert,
   ``write_through_selective``: on the second hit, ``write_back``: on eviction) and L2 -> L3
   as ``controller.should_backup`` decides; evict LRU pages when a tier is full, never a page
   a request is using or one whose backup is in flight.

Requests of one rank run one at a time (a scheduler's batch of one); ranks run in parallel.
Backup completions arrive on the controller's thread and are queued, never applied there,
so the controller never waits on this rank's lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from hicache_core.controller import StorageController
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.node.device_pool import DevicePool
from hicache_core.node.host_pages import HostPages
from hicache_core.node.kvgen import expected_pages, mismatched_pages
from hicache_core.node.rank_backups import RankBackups
from hicache_core.node.rank_evict import RankEviction
from hicache_core.node.results import TIERS, RankCounters, RequestResult
from hicache_core.node.tiers import TierIndex
from hicache_core.node.tokens import CacheRequest

__all__ = ["TIERS", "CacheRank", "RankCounters", "RequestResult"]

log = logging.getLogger(__name__)

class CacheRank(RankEviction, RankBackups):
    """L1 + L2 + controller for one DP rank; see the module docstring."""

    def __init__(
        self,
        rank: int,
        host_pool: HostKVPool,
        device_pool: DevicePool,
        controller: StorageController,
        backup_wait_s: float = 5.0,
    ) -> None:
        self.rank = rank
        self.backup_wait_s = backup_wait_s
        self.host_pool = host_pool
        self.host = HostPages(host_pool)
        self.device = device_pool
        self.controller = controller
        self.page_size = host_pool.page_size
        self.page_bytes = host_pool.page_bytes
        self.l1 = TierIndex("device", device_pool.capacity)
        self.l2 = TierIndex("host", host_pool.page_num)
        self.counters = RankCounters()
        self._synced_epoch = controller.storage_epoch  # the storage epoch L2 was last re-synced to
        self._resync_after = 0.0  # no re-sync sweep before this (monotonic), after failed backups
        # The backend name, kept here so that requests never wait on the controller's admin
        # lock (held for the whole of an attach or detach).
        self.backend_name: str | None = None
        self._lock = threading.RLock()
        self._done: queue.SimpleQueue[tuple[list[str], int, list[bool]]] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._inflight_pages = 0  # pages handed to controller.backup() and not yet applied

    # ------------------------------------------------------------------ idle check (SGLang strict mode)
    def idle_reason(self) -> str | None:
        """SGLang's reason to refuse a strict-idle switch (requests queued or running), or None.

        The controller prefixes it with "Reject attach: " / "Reject detach: ".
        """
        with self._state_lock:
            waiting, running = self._waiting, self._running
        if waiting or running:
            return f"scheduler is not idle. #queue-req={waiting} #running-req={running}"
        return None

    def new_storage_epoch(self, backend: str) -> None:
        """``backend`` was (re)attached (the controller started a new storage epoch)."""
        with self._lock:
            self.backend_name = backend

    # ------------------------------------------------------------------ the request path
    def process(self, req: CacheRequest) -> RequestResult:
        t_arrive = time.perf_counter()
        with self._state_lock:
            self._waiting += 1
        with self._lock:
            with self._state_lock:
                self._waiting -= 1
                self._running += 1
            try:
                return self._process(req, t_arrive)
            finally:
                with self._state_lock:
                    self._running -= 1

    def _process(self, req: CacheRequest, t_arrive: float) -> RequestResult:
        t0 = time.perf_counter()
        self.drain_backups()
        self.resync()
        hashes = req.page_hashes
        n = len(hashes)
        held_l1: list[str] = []
        held_l2: list[str] = []
        verify_errors = 0
        bytes_h2d = 0
        bytes_s2h = 0
        note = ""
        backups: list[str] = []
        try:
            # 1. the longest prefix: L1, then L2.
            d = self.l1.leading_hits(hashes)
            for h in hashes[:d]:
                self._hold(self.l1, h, held_l1)
            host_end = d + self.l2.leading_hits(hashes, d)
            for h in hashes[d:host_end]:
                self._hold(self.l2, h, held_l2)
            for h in hashes[:host_end]:
                self._count_hit(h, backups)
            t_match = time.perf_counter()

            # 2. L3: prefetch what follows into L2, verify it there.
            storage_pages = 0
            if host_end < n and self.controller.attached:
                storage_pages, errs, note = self._prefetch(hashes, host_end, held_l2)
                verify_errors += errs
                bytes_s2h = storage_pages * self.page_bytes
            matched = host_end + storage_pages
            t_prefetch = time.perf_counter()

            # 3. load L2 hits (host and storage) into L1, verify them there.
            loaded, errs, good = self._load_to_device(hashes, d, matched, held_l1, held_l2)
            verify_errors += errs
            bytes_h2d = loaded * self.page_bytes
            if errs:  # a corrupt L2 page: the hit ends before it
                matched = min(matched, d + good)
                storage_pages = max(0, matched - host_end)
                host_end = min(host_end, matched)
            t_load = time.perf_counter()

            # 4. compute what missed, insert it, write it down per the policy.
            self._compute_and_insert(hashes[matched:], held_l1, held_l2, backups)
            self._issue_backups(backups)
            t_compute = time.perf_counter()
        finally:
            for h in held_l1:
                self._release(self.l1, h)
            for h in held_l2:
                self._release(self.l2, h)
            self.l1.touch_chain(hashes)
            self.l2.touch_chain(hashes)

        cached = self._cap_tokens(req, d, host_end - d, storage_pages)
        computed = req.input_tokens - sum(cached.values())
        c = self.counters
        c.requests += 1
        c.input_tokens += req.input_tokens
        for tier in TIERS:
            c.cached_tokens[tier] += cached[tier]
        c.computed_tokens += computed
        c.verify_errors += verify_errors
        c.bytes_loaded_host_to_device += bytes_h2d
        c.bytes_loaded_storage_to_host += bytes_s2h
        return RequestResult(
            rid=req.rid,
            rank=self.rank,
            input_tokens=req.input_tokens,
            cached=cached,
            computed_tokens=computed,
            storage_backend=self.backend_name if self.controller.attached else None,
            verify_errors=verify_errors,
            bytes_loaded={"host_to_device": bytes_h2d, "storage_to_host": bytes_s2h},
            timings_ms={
                "queue": (t0 - t_arrive) * 1e3,
                "match": (t_match - t0) * 1e3,
                "prefetch": (t_prefetch - t_match) * 1e3,
                "load": (t_load - t_prefetch) * 1e3,
                "compute": (t_compute - t_load) * 1e3,
                "total": (t_compute - t_arrive) * 1e3,
            },
            pages=n,
            prefetch_note=note,
        )

    @staticmethod
    def _cap_tokens(req: CacheRequest, device: int, host: int, storage: int) -> dict[str, int]:
        """Pages per tier as tokens, capped in tier order so the total never exceeds the input."""
        out: dict[str, int] = {}
        used = 0
        for tier, pages in zip(TIERS, (device, host, storage)):
            tokens = min(pages * req.page_size, max(0, req.input_tokens - used))
            out[tier] = tokens
            used += tokens
        return out

    # ------------------------------------------------------------------ helpers: holding pages
    @staticmethod
    def _hold(index: TierIndex, h: str, held: list[str]) -> None:
        entry = index.get(h)
        assert entry is not None
        entry.refs += 1
        index.touch(h)
        held.append(h)

    def _release(self, index: TierIndex, h: str) -> None:
        entry = index.get(h)
        if entry is not None:
            entry.refs -= 1

    def _count_hit(self, h: str, backups: list[str]) -> None:
        """A reuse of page ``h``: count it and let the write policy react."""
        e1 = self.l1.get(h)
        if e1 is not None:
            e1.hits += 1
        e2 = self.l2.get(h)
        selective = self.controller.write_policy == "write_through_selective"
        if e2 is None and e1 is not None and selective and e1.hits >= 2:
            # write_through_selective: a page hit twice is worth a copy in L2 (and in L3).
            self._insert_l2([h], self.device.read([e1.slot]), backups)
            e2 = self.l2.get(h)
            if e2 is not None:
                e2.hits = e1.hits - 1
        if e2 is not None:
            e2.hits += 1
            hits = max(e2.hits, e1.hits if e1 is not None else 0)
            if self._needs_backup(h) and self.controller.should_backup("hit", hits):
                backups.append(h)

    # ------------------------------------------------------------------ L3 -> L2
    def _prefetch(self, hashes: Sequence[str], start: int, held_l2: list[str]) -> tuple[int, int, str]:
        """Prefetch ``hashes[start:]`` from L3; returns (pages kept, verify errors, note).

        L2 room is made for at most half of L2: how much L3 holds is unknown until the
        controller's worker asks, and emptying L2 for a request L3 cannot serve would only
        throw away pages. A longer hit is truncated where L2 runs out.
        """
        self._make_host_room(min(len(hashes) - start, max(1, self.l2.capacity // 2)))
        op = self.controller.prefetch(list(hashes[start:]), list(hashes[:start]))
        if op is None:
            return 0, 0, ""
        res = op.wait()
        self.counters.prefetch_ops += 1
        got = list(res.page_hashes)
        if not got:
            return 0, 0, res.reason
        pages = self.host_pool.indices_to_pages(res.host_indices)
        if got != list(hashes[start : start + len(got)]):
            # The controller must hand back the leading pages in order; anything else is a bug.
            log.error("rank %d: prefetch returned pages out of order; dropping them", self.rank)
            self.host_pool.free(res.host_indices)
            return 0, len(got), "prefetch returned pages out of order"
        bad = mismatched_pages(got, self.host.read(pages))
        self.counters.verified_pages += len(got)
        keep = bad[0] if bad else len(got)
        if bad:
            log.error("rank %d: %d page(s) loaded from L3 hold wrong bytes (first at page %d)",
                      self.rank, len(bad), start + bad[0])
        if keep < len(got):
            self.host_pool.free(self.host_pool.pages_to_indices(pages[keep:]))
        self.counters.prefetch_pages += keep
        for h, page in zip(got[:keep], pages[:keep]):
            if h in self.l2:  # cannot happen (L2 matching stopped before it); never leak a page
                self.host_pool.free(self.host_pool.pages_to_indices([page]))
                continue
            entry = self.l2.add(h, page)
            entry.stored_epoch = self.storage_epoch
            self._hold(self.l2, h, held_l2)
        return keep, len(bad), res.reason

    # ------------------------------------------------------------------ L2 -> L1
    def _load_to_device(
        self, hashes: Sequence[str], start: int, end: int, held_l1: list[str], held_l2: list[str]
    ) -> tuple[int, int, int]:
        """Copy pages ``hashes[start:end]`` (all in L2) to L1 and verify them.

        Returns (pages loaded, verify errors, leading pages of the range that are good).
        """
        want = [h for h in hashes[start:end] if h not in self.l1]
        if not want:
            return 0, 0, end - start
        slots = self._alloc_device(len(want))
        targets = want[: len(slots)]
        host_pages = [self._l2_slot(h) for h in targets]
        self.device.load_from_host(self.host, slots, host_pages)
        bad = mismatched_pages(targets, self.device.read(slots))
        self.counters.verified_pages += len(targets)
        for i, (h, slot) in enumerate(zip(targets, slots)):
            if bad and i >= bad[0]:
                self.device.free(slot)
                continue
            self.l1.add(h, slot)
            self._hold(self.l1, h, held_l1)
        good = end - start
        if bad:
            log.error("rank %d: %d page(s) in L2 hold wrong bytes; dropping them", self.rank, len(bad))
            good = list(hashes[start:end]).index(targets[bad[0]])
            for i in bad:
                self._drop_l2(targets[i], held_l2)
        return len(targets), len(bad), good

    def _l2_slot(self, h: str) -> int:
        entry = self.l2.get(h)
        assert entry is not None
        return entry.slot

    def _drop_l2(self, h: str, held_l2: list[str]) -> None:
        entry = self.l2.get(h)
        if entry is None or entry.backups:
            return
        if h in held_l2:
            held_l2.remove(h)
        self.l2.remove(h)
        self.host_pool.free(self.host_pool.pages_to_indices([entry.slot]))

    # ------------------------------------------------------------------ compute + insert
    def _compute_and_insert(
        self, missing: Sequence[str], held_l1: list[str], held_l2: list[str], backups: list[str]
    ) -> None:
        if not missing:
            return
        rows = expected_pages(missing, self.page_bytes, self.device.device)
        fresh = [i for i, h in enumerate(missing) if h not in self.l1]
        slots = self._alloc_device(len(fresh))
        placed = fresh[: len(slots)]
        if placed:
            self.device.write(slots, rows[placed])
            for i, slot in zip(placed, slots):
                self.l1.add(missing[i], slot)
                self._hold(self.l1, missing[i], held_l1)
        policy = self.controller.write_policy
        # Pages that found no L1 room are kept in L2 whatever the policy, so they stay cached.
        to_host = list(range(len(missing))) if policy == "write_through" else fresh[len(slots):]
        to_host = [i for i in to_host if missing[i] not in self.l2]
        if to_host:
            self._insert_l2([missing[i] for i in to_host], rows[to_host], backups)

    def _insert_l2(self, hashes: Sequence[str], rows: torch.Tensor, backups: list[str]) -> int:
        """Write pages into L2, evicting LRU pages for room; returns how many were placed.

        Pages go in chunks of at most a quarter of L2, and each chunk's ``insert`` backups are
        issued at once, so a request larger than L2 still reaches L3 page by page.
        """
        todo = [i for i, h in enumerate(hashes) if h not in self.l2]
        chunk = max(1, self.l2.capacity // 4)
        placed = 0
        for c in range(0, len(todo), chunk):
            part = todo[c : c + chunk]
            self._make_host_room(len(part))
            part = part[: self.host_pool.available_size() // self.page_size]
            if not part:
                break
            indices = self.host_pool.alloc(len(part) * self.page_size)
            if indices is None:
                break
            pages = self.host_pool.indices_to_pages(indices)
            self.host.write(pages, rows[part])
            self.counters.bytes_device_to_host += len(part) * self.page_bytes
            new: list[str] = []
            for i, page in zip(part, pages):
                self.l2.add(hashes[i], page)
                if self.controller.should_backup("insert"):
                    new.append(hashes[i])
            self._issue_backups(new)
            placed += len(part)
        return placed

    # ------------------------------------------------------------------ status
    def status(self, include_storage: bool = True) -> dict[str, Any]:
        """Tiers, counters and (``include_storage``) the controller's status of this rank."""
        self.drain_backups()
        with self._lock:
            l1 = self.l1.counts()
            l2 = self.l2.counts()
            counters = self.counters.to_dict()
        with self._state_lock:
            waiting, running = self._waiting, self._running
        return {
            "rank": self.rank,
            "queue_req": waiting,
            "running_req": running,
            "tiers": {
                "device": {**l1, "page_bytes": self.page_bytes, "device": str(self.device.device),
                           "used_bytes": l1["pages"] * self.page_bytes,
                           "capacity_bytes": l1["capacity_pages"] * self.page_bytes},
                "host": {**l2, "page_bytes": self.page_bytes, "layout": self.host_pool.layout,
                         "pinned_memory": self.host_pool.pin_memory,
                         "free_pages": self.host_pool.available_size() // self.page_size,
                         "used_bytes": l2["pages"] * self.page_bytes,
                         "capacity_bytes": l2["capacity_pages"] * self.page_bytes},
            },
            "counters": counters,
            "backup_pages_in_flight": self._inflight_pages,
            "storage": self.controller.status() if include_storage else {"attached": self.controller.attached},
        }
