"""Test data for host pools: fill pages with reproducible random bytes, read them back as bytes.

A round-trip test writes pages with ``fill_random_pages``, stores and reloads them through a
backend, and compares ``read_page_bytes`` with what the fill returned. Bytes are compared in
the host pool's flat page order (``HostKVPool.read_page``), whatever the pool's layout.
"""

from __future__ import annotations

import torch

from hicache_core.memory.host_pool import HostKVPool


def random_page(pool: HostKVPool, seed: int) -> torch.Tensor:
    """One flat page of random bytes (in the pool's dtype), the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8, generator=gen)
    return raw.view(pool.dtype)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().view(-1).view(torch.uint8).numpy())


def fill_random_pages(pool: HostKVPool, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
    """Allocate ``n`` pages, write random bytes into each; their token indices and the bytes.

    Page ``i`` of a fill with ``seed`` gets ``random_page(pool, seed * 100003 + i)``, so
    fills with different seeds differ and the same seed writes the same pages again.
    """
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None, "host pool too small for the test"
    expected = []
    for i, page in enumerate(pool.indices_to_pages(idx)):
        data = random_page(pool, seed * 100003 + i)
        pool.write_page(page, data)
        expected.append(tensor_bytes(data))
    return idx, expected


def read_page_bytes(pool: HostKVPool, idx: torch.Tensor) -> list[bytes]:
    """The bytes of every page behind the token indices ``idx``, in flat page order."""
    return [tensor_bytes(pool.read_page(p)) for p in pool.indices_to_pages(idx)]
