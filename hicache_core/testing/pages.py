"""Test data for host pools: random page bytes, scattered host pages, logical KV.

A round-trip test writes pages with ``fill_random_pages`` (or ``fill_pages``), stores and
reloads them through a backend, and compares ``read_page_bytes`` with what the fill returned.
Bytes are a page's stored bytes (``hicache_core.memory.pages``: ``read_flat_page`` /
``write_flat_page``), whatever the pool's layout. Pages are random bytes from a seeded
generator, never patterns: a backend that permutes, truncates or misplaces bytes cannot pass
by accident. ``logical_kv`` gives a page as (kv, layer, token, head, dim) values, to compare
the same KV held by pools of different layouts.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from hicache_core.memory.pages import page_format, page_view, read_flat_page, write_flat_page

#: The order ``logical_kv`` returns, outermost first (MLA pages have no ``kv`` dimension).
LOGICAL_ORDER_MHA = ("kv", "layer", "token", "head", "dim")
LOGICAL_ORDER_MLA = ("layer", "token", "head", "dim")


def page_nbytes(pool: Any) -> int:
    """Bytes of one stored page of ``pool``."""
    return int(page_format(pool).page_bytes)


def random_page(pool: Any, seed: int) -> torch.Tensor:
    """One flat page of random bytes (in the pool's dtype), the same for the same seed."""
    n = page_nbytes(pool)
    if n > 1 << 16:  # numpy's generator is faster for big pages, torch's for small ones
        raw = torch.frombuffer(bytearray(np.random.default_rng(seed).bytes(n)), dtype=torch.uint8)
    else:
        raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return raw.view(pool.kv_buffer.dtype)


def fill_buffer_randomly(buffer: torch.Tensor, seed: int) -> None:
    """Overwrite every byte of ``buffer`` (contiguous) with seeded random bytes."""
    raw = buffer.view(-1).view(torch.uint8).numpy()
    raw[:] = np.frombuffer(np.random.default_rng(seed).bytes(raw.size), dtype=np.uint8)  # faster than torch.randint


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes of ``t`` in its element order (a copy)."""
    return bytes(t.contiguous().view(-1).view(torch.uint8).numpy())


def fill_pages(pool: Any, pages: Sequence[int], seed: int) -> list[bytes]:
    """Write random bytes into each of ``pages`` (page numbers); the bytes written, in order.

    Page ``i`` of the list gets ``random_page(pool, seed * 100003 + i)``, so fills with
    different seeds differ and the same seed writes the same pages again.
    """
    expected = []
    for i, page in enumerate(pages):
        data = random_page(pool, seed * 100003 + i)
        write_flat_page(pool, page, data)
        expected.append(tensor_bytes(data))
    return expected


def fill_random_pages(pool: Any, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
    """Allocate ``n`` pages, write random bytes into each; their token indices and the bytes."""
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None, "host pool too small for the test"
    return idx, fill_pages(pool, pool.indices_to_pages(idx), seed)


def read_page_bytes(pool: Any, idx: torch.Tensor) -> list[bytes]:
    """The stored bytes of every page behind the token indices ``idx``, in order."""
    return [tensor_bytes(read_flat_page(pool, p)) for p in pool.indices_to_pages(idx)]


def is_scattered(pages: Sequence[int]) -> bool:
    """True when ``pages`` are neither contiguous nor in increasing order."""
    ordered = all(b > a for a, b in itertools.pairwise(pages))
    contiguous = all(b == a + 1 for a, b in itertools.pairwise(pages))
    return len(pages) > 2 and not ordered and not contiguous


def scattered_alloc(pool: Any, n: int, seed: int) -> torch.Tensor:
    """Token indices of ``n`` pages that are scattered over the pool and out of order.

    Done the way a running engine gets them: allocate a block of pages, free a shuffled
    subset (one page at a time) and allocate again, so the pool hands back freed pages in
    its own order; the rest of the block stays allocated. Fails when the pool is too small.
    """
    rng = random.Random(seed)
    block = pool.alloc(min(pool.available_size(), 4 * n * pool.page_size))
    if block is None or len(block) < 3 * n * pool.page_size:
        raise AssertionError(f"host pool too small for {n} scattered pages (needs {4 * n} free)")
    pages = pool.indices_to_pages(block)
    # Skip the first page of the block so a backend that writes pages 0..n-1 is never right.
    freed = rng.sample(pages[1:], n)
    for page in freed:
        pool.free(pool.pages_to_indices([page]))
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    got = pool.indices_to_pages(idx)
    if n >= 3 and not is_scattered(got):  # the pool gave them in order: reorder as a caller might
        ordered = sorted(got)
        idx = pool.pages_to_indices([ordered[1], ordered[0], *ordered[2:]])
    return torch.as_tensor(idx, dtype=torch.int64)


def logical_kv(pool: Any, page: int) -> torch.Tensor:
    """Page ``page`` as KV values in logical order, whatever the pool's layout (a copy).

    MHA: ``(kv, layer, token, head, dim)``; MLA: ``(layer, token, head, dim)``. Two pools
    hold the same KV in a page exactly when these tensors are equal (compared as bytes).
    """
    fmt = page_format(pool)
    view = page_view(pool, page)
    target = LOGICAL_ORDER_MLA if fmt.kind == "mla" else LOGICAL_ORDER_MHA
    perm = [fmt.order.index(d) for d in target]
    return view.permute(*perm).contiguous().clone()


def logical_bytes(pool: Any, page: int) -> bytes:
    """``logical_kv`` of a page as bytes."""
    return tensor_bytes(logical_kv(pool, page))


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous CPU tensors hold the same bytes (NaNs included; ``torch.equal``
    compares values, and is far slower)."""
    return bool(a.reshape(-1).view(torch.uint8).numpy().tobytes() == b.reshape(-1).view(torch.uint8).numpy().tobytes())


class PoolSnapshot:
    """A host pool's bytes before a call, to name the host pages the call changed.

    One clone of ``kv_buffer`` (the kit's pools are a few hundred KiB) and one comparison
    after the call; the page-by-page search runs only when something changed.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.before = pool.kv_buffer.clone()

    def changed_pages(self, allowed: Collection[int] = ()) -> list[int]:
        """Host pages whose bytes changed since the snapshot, other than ``allowed``."""
        now = self.pool.kv_buffer
        if _same_bytes(now, self.before):
            return []
        skip = set(allowed)
        if skip:  # the usual case after a read: only the allowed pages changed
            patched = copy.copy(self.pool)
            patched.kv_buffer = self.before.clone()
            for p in skip:
                page_view(patched, p).copy_(page_view(self.pool, p))
            if _same_bytes(now, patched.kv_buffer):
                return []
        # The pool's geometry over a mask of changed bytes (as integers: NaN != NaN otherwise).
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[now.element_size()]
        diff = copy.copy(self.pool)
        diff.kv_buffer = now.view(width) != self.before.view(width)
        return [p for p in range(self.pool.page_num) if p not in skip and bool(page_view(diff, p).any())]
