"""The trace's own prefix-reuse figure, computed exactly (infinite cache, prefix reuse only).

As ``shared/traces/README.md`` counts it: requests in file order; block ``j`` of a request
hits when the same prefix of block ids (``hash_ids[:j+1]``) appeared in an earlier request
and every block before it hit too; hit tokens are ``hit blocks x block tokens`` (512 in the
Mooncake traces) capped at ``input_length``. Prefixes are interned in a trie, so the cost is linear in the blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from hicache_core.replay.trace import TraceRequest


@dataclass(frozen=True)
class ReuseFigures:
    requests: int
    distinct_blocks: int
    blocks: int
    hit_blocks: int
    input_tokens: int
    hit_tokens: int
    span_seconds: float

    @property
    def block_hit_ratio(self) -> float:
        return self.hit_blocks / self.blocks if self.blocks else 0.0

    @property
    def token_hit_ratio(self) -> float:
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["block_hit_ratio"] = self.block_hit_ratio
        out["token_hit_ratio"] = self.token_hit_ratio
        return out


def prefix_reuse(requests: Iterable[TraceRequest], block_tokens: int | None = None) -> ReuseFigures:
    """The figures of ``requests``; ``block_tokens`` overrides each request's own block size."""
    trie: dict[tuple[int, int], int] = {}  # (parent prefix id, block id) -> prefix id
    count = blocks = hit_blocks = input_tokens = hit_tokens = 0
    first = last = None
    for req in requests:
        count += 1
        # The span is min to max: a trace's lines need not be in time order.
        first = req.timestamp_ms if first is None else min(first, req.timestamp_ms)
        last = req.timestamp_ms if last is None else max(last, req.timestamp_ms)
        parent, hits, hitting = 0, 0, True
        for block in req.hash_ids:
            key = (parent, block)
            node = trie.get(key)
            if node is None:
                hitting = False
                node = len(trie) + 1
                trie[key] = node
            elif hitting:
                hits += 1
            parent = node
        blocks += len(req.hash_ids)
        hit_blocks += hits
        input_tokens += req.input_length
        hit_tokens += min(hits * (block_tokens or req.block_tokens), req.input_length)
    span = ((last or 0) - (first or 0)) / 1000.0
    return ReuseFigures(count, len(trie), blocks, hit_blocks, input_tokens, hit_tokens, span)
