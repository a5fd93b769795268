"""The KV bytes a page must hold: a pure function of its page hash, cheap to make and check.

A real engine computes KV with the model; the reference node stands in for it with bytes
derived from the page hash. Each 8-byte word ``i`` of a page is one of the digest's four
words XOR ``i * ODD``: a page holding another page's bytes, a shifted page, a page with its
K and V pieces swapped or a half-written page all differ from the expected bytes, so every
load can be verified exactly. Pages are built and checked in batches with tensor ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# An odd 63-bit constant (the golden-ratio increment, top bit cleared so it fits int64).
_ODD = 0x1E3779B97F4A7C15


def _digest_words(page_hashes: Sequence[str]) -> torch.Tensor:
    """(n, 4) int64: the 32-byte digest of each page hash as four little-endian words."""
    raw = b"".join(bytes.fromhex(h[:64]) for h in page_hashes)
    return torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(len(page_hashes), 4)


def expected_pages(
    page_hashes: Sequence[str], page_bytes: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n, page_bytes) uint8: the bytes each page must hold."""
    if page_bytes % 8:
        raise ValueError(f"page_bytes {page_bytes} must be a multiple of 8")
    n = len(page_hashes)
    if n == 0:
        return torch.empty((0, page_bytes), dtype=torch.uint8, device=device)
    words = page_bytes // 8
    base = _digest_words(page_hashes).to(device)
    index = torch.arange(words, dtype=torch.int64, device=device)
    out = base[:, index % 4] ^ (index * _ODD)  # int64 multiply wraps, as intended
    return out.view(torch.uint8).reshape(n, page_bytes)


def mismatched_pages(
    page_hashes: Sequence[str], actual: torch.Tensor
) -> list[int]:
    """Positions (into ``page_hashes``) of pages whose bytes in ``actual`` are not the expected ones."""
    if len(page_hashes) == 0:
        return []
    expected = expected_pages(page_hashes, int(actual.shape[1]), actual.device)
    bad = (expected != actual).any(dim=1)
    return [int(i) for i in torch.nonzero(bad).flatten().tolist()]
