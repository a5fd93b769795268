"""The v2 pool-transfer API of sglang 0.5.23: KV plus sidecar pools (Mamba, SWA, DSA, draft...).

Hybrid models keep more than attention KV per prefix: a Mamba/SSM state, a sliding-window KV, a
DSA indexer cache, a draft model's KV. SGLang registers each as a host pool under a
``PoolName`` (``register_mem_host_pool_v2``) and moves them with ``PoolTransfer`` descriptors
(``batch_exists_v2`` / ``batch_get_v2`` / ``batch_set_v2``). Names, fields and semantics are
SGLang's, so SGLang's own objects can be passed in (they are read by attribute).

Hit policies, for ``batch_exists_v2``: ``all_pages``: every page of the KV prefix must have
this pool's page too (DSA); ``trailing_pages``: only the last ``len(transfer.keys)`` pages of a
prefix must (Mamba/SWA states, which cover only a prefix's tail).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch


class PoolName(str, Enum):
    """Well-known pool names (SGLang's values); any other string names a pool too."""

    KV = "kv"
    MAMBA = "mamba"
    SWA = "swa"
    AUXILIARY_SWA = "auxiliary_swa"
    INDEXER = "indexer"
    DRAFT = "draft"
    DRAFT_INDEXER = "draft_indexer"
    DRAFT_SWA = "draft_swa"

    def __str__(self) -> str:
        return self.value


class PoolHitPolicy(str, Enum):
    """How a sidecar pool's pages gate a KV prefix hit (see the module docstring)."""

    ALL_PAGES = "all_pages"
    TRAILING_PAGES = "trailing_pages"
    BLOCK_GROUPS = "block_groups"

    def __str__(self) -> str:
        return self.value


@dataclass
class PoolTransfer:
    """One pool's part of a transfer: host-pool indices and page keys (SGLang's descriptor)."""

    name: PoolName | str
    host_indices: Any | None = None
    device_indices: Any | None = None
    keys: list[str] | None = None
    hit_policy: PoolHitPolicy | str = PoolHitPolicy.ALL_PAGES
    nodes_to_load: list[Any] | None = None
    indices_from_pool: PoolName | str | None = None
    block_pages: int = 0
    group_pages: int = 0


@dataclass
class PoolTransferResult:
    """What ``batch_exists_v2`` found: the usable KV prefix and each pool's own hit count."""

    kv_hit_pages: int
    extra_pool_hit_pages: dict[str, int] = field(default_factory=dict)
    #: Prefix lengths (in pages) that every pool can restore; trailing-window pools can make
    #: 5 restorable while 4 is not, so callers intersect these across ranks.
    restorable_prefix_pages: list[int] | None = None

    @classmethod
    def empty(cls) -> PoolTransferResult:
        return cls(0, {})

    def update_kv_hit_pages(self, kv_hit_pages: int) -> None:
        self.kv_hit_pages = max(self.kv_hit_pages, kv_hit_pages)

    def update_extra_pool_hit_pages(self, results: dict[str, int]) -> None:
        self.extra_pool_hit_pages.update(results)


def pool_name(name: Any) -> str:
    """A pool name as a plain string (``PoolName.MAMBA`` -> ``"mamba"``; SGLang's enum too)."""
    value = getattr(name, "value", name)
    return str(value)


def count_pool_hits(results: dict[str, list[bool]]) -> dict[str, int]:
    """Leading successes per pool (every pool's prefix must be contiguous from the start)."""
    return {name: (rs.index(False) if False in rs else len(rs)) for name, rs in results.items()}


def restorable_prefixes(present: list[bool], kv_pages: int, policy: str, window: int) -> set[int]:
    """The prefix lengths (1..kv_pages) a pool with per-page ``present`` flags can restore.

    ``all_pages``: prefixes whose every page is present; ``trailing_pages``: prefixes whose last
    ``window`` pages are present. Raises ``ValueError`` for a policy it does not know (a silent
    guess could serve a prefix whose state is missing).
    """
    if policy == PoolHitPolicy.ALL_PAGES.value:
        boundary = next((i for i in range(kv_pages) if not present[i]), kv_pages)
        return set(range(1, boundary + 1))
    if policy == PoolHitPolicy.TRAILING_PAGES.value:
        window = max(1, window)
        return {
            n for n in range(1, kv_pages + 1) if all(present[i] for i in range(max(0, n - window), n))
        }
    raise ValueError(f"unsupported pool hit policy {policy!r}; use all_pages or trailing_pages")


def usable_prefix(
    kv_pages: int, transfers: Sequence[Any], present: Callable[[str, int], Sequence[bool]]
) -> PoolTransferResult:
    """The ``batch_exists_v2`` answer from the KV prefix and each sidecar pool's pages.

    ``present(pool_name, n)`` says, per page, whether that pool holds the first ``n`` pages.
    ``kv_hit_pages`` is the longest prefix every pool can restore under its hit policy.
    """
    hits: dict[str, int] = {PoolName.KV.value: kv_pages} if kv_pages else {}
    restorable = set(range(1, kv_pages + 1))
    for transfer in transfers:
        if not restorable:
            break
        name = pool_name(transfer.name)
        ok = restorable_prefixes(list(present(name, kv_pages)), kv_pages, pool_name(transfer.hit_policy),
                                 len(transfer.keys or []))
        if ok:
            hits[name] = max(ok)
        restorable &= ok
    ordered = sorted(restorable)
    return PoolTransferResult(ordered[-1] if ordered else 0, hits, ordered)


def transfer_indices(host_indices: Any) -> torch.Tensor:
    """A transfer's host indices as an int64 tensor (none: an empty one, which a key list refuses)."""
    return torch.as_tensor([] if host_indices is None else host_indices, dtype=torch.int64)
