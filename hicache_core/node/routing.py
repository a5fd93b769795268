"""Routing requests to data-parallel ranks like a cache-aware router: prefix affinity bounded by load.

As SGLang's router's ``cache_aware`` policy: each rank remembers the page hashes it was sent
(bounded, least recently used first out, at the size of its L1 + L2). A request goes to the
rank holding the longest prefix of it when that prefix is at least ``match_ratio`` of the
request; otherwise, or when the ranks' loads are out of balance (the busiest has more than
``balance_abs`` requests in flight over the idlest and more than ``balance_rel`` times it),
to the least loaded rank. Hashing only the first page sent every request of a trace whose
requests share a first block (the Mooncake traces) to one rank.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankLoad:
    in_flight: int = 0
    routed: int = 0
    by_prefix: int = 0
    by_load: int = 0
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)


class CacheAwareRouter:
    def __init__(self, ranks: int, capacity_pages: int, match_ratio: float = 0.5, balance_abs: int = 4,
                 balance_rel: float = 1.5) -> None:
        self.ranks = [RankLoad() for _ in range(ranks)]
        self.capacity_pages = max(1, capacity_pages)
        self.match_ratio = match_ratio
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self._lock = threading.Lock()

    def _leading(self, rank: RankLoad, hashes: Sequence[str]) -> int:
        n = 0
        for h in hashes:
            if h not in rank.known:
                break
            n += 1
        return n

    def route(self, hashes: Sequence[str]) -> int:
        """The rank for a request with page ``hashes``; counts it as in flight there."""
        with self._lock:
            if len(self.ranks) == 1:
                choice = 0
            else:
                choice = self._choose(hashes)
            r = self.ranks[choice]
            r.in_flight += 1
            r.routed += 1
            for h in hashes:
                r.known[h] = None
                r.known.move_to_end(h)
            while len(r.known) > self.capacity_pages:
                r.known.popitem(last=False)
            return choice

    def _choose(self, hashes: Sequence[str]) -> int:
        loads = [r.in_flight for r in self.ranks]
        idlest = min(range(len(loads)), key=lambda i: (loads[i], len(self.ranks[i].known)))
        busiest = max(loads)
        imbalanced = busiest - loads[idlest] > self.balance_abs and busiest > self.balance_rel * loads[idlest]
        if not imbalanced and hashes:
            matches = [self._leading(r, hashes) for r in self.ranks]
            best = max(range(len(matches)), key=lambda i: (matches[i], -loads[i]))
            if matches[best] and matches[best] >= self.match_ratio * len(hashes):
                self.ranks[best].by_prefix += 1
                return best
        self.ranks[idlest].by_load += 1
        return idlest

    def done(self, rank: int) -> None:
        with self._lock:
            self.ranks[rank].in_flight -= 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policy": "cache_aware",
                "match_ratio": self.match_ratio,
                "balance_abs": self.balance_abs,
                "balance_rel": self.balance_rel,
                "ranks": [
                    {"rank": i, "in_flight": r.in_flight, "routed": r.routed, "by_prefix": r.by_prefix,
                     "by_load": r.by_load, "known_pages": len(r.known)}
                    for i, r in enumerate(self.ranks)
                ],
            }
