"""Requests as the node sees them: token ids or Mooncake block ids, and their page hashes.

Mooncake traces give ``hash_ids``: one id per block of tokens (512 in the Mooncake traces, 16 in
Alibaba's Qwen traces), equal ids at equal positions meaning a reusable prefix. The node turns
each block id into that many token ids that are a pure
function of the id, so equal block ids give equal tokens and, through SGLang's hash chain,
equal page hashes. Hashing goes through numpy bytes: the digests equal ``keys.get_hash_str``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hicache_core.replay.trace import (
    MOONCAKE_BLOCK_TOKENS as MOONCAKE_BLOCK_TOKENS,  # re-exported: the node API names it
)


def block_token_ids(block_id: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> np.ndarray:
    """The token ids that stand for Mooncake block ``block_id`` (uint32, ``block_tokens`` long).

    Ids below ``2**32 // block_tokens`` (every id of the published Mooncake traces) get
    disjoint token ranges, so two different blocks never hash alike. Larger ids (hashed ids,
    64-bit ids) would wrap onto those ranges, so their tokens are drawn from a generator seeded
    with the whole id instead: two ids then share a page only with a chance of about 2**-32
    per token of the page.
    """
    block_id = int(block_id)
    if 0 <= block_id < (1 << 32) // block_tokens:
        base = block_id * block_tokens
        return (np.arange(block_tokens, dtype=np.uint64) + base).astype("<u4")
    seed = int.from_bytes(hashlib.sha256(f"hicache-block:{block_id}".encode()).digest(), "little")
    return np.random.Generator(np.random.PCG64(seed)).integers(0, 1 << 32, block_tokens, dtype=np.uint32).astype("<u4")


def tokens_from_blocks(hash_ids: Sequence[int], block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> np.ndarray:
    """All token ids of a block-id request, every block full."""
    if not hash_ids:
        return np.zeros(0, dtype="<u4")
    return np.concatenate([block_token_ids(b, block_tokens) for b in hash_ids])


def page_hashes_fast(tokens: np.ndarray, page_size: int, prior_hash: str | None = None) -> list[str]:
    """SGLang's page hash chain over full pages of ``tokens`` (same digests as ``keys.page_hashes``)."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    data = np.ascontiguousarray(tokens, dtype="<u4").tobytes()
    stride = page_size * 4
    out: list[str] = []
    prior = bytes.fromhex(prior_hash) if prior_hash else b""
    for start in range(0, len(data) - stride + 1, stride):
        digest = hashlib.sha256(prior + data[start : start + stride]).digest()
        out.append(digest.hex())
        prior = digest
    return out


@dataclass(frozen=True)
class CacheRequest:
    """One request: its page hashes and how many of its tokens count as input.

    ``input_tokens`` is what the client sent (``input_length`` for block-id requests, whose
    last block may be partial: the trace counts a hit block as a whole block capped at the
    input length, and so does the node).
    """

    page_hashes: tuple[str, ...]
    input_tokens: int
    page_size: int
    rid: str = ""

    @property
    def pages(self) -> int:
        return len(self.page_hashes)


def request_from_token_ids(token_ids: Sequence[int], page_size: int, rid: str = "") -> CacheRequest:
    """A request for explicit token ids; the trailing partial page has no key and never hits."""
    arr = np.asarray(token_ids, dtype=np.int64)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFFFFFF):
        raise ValueError("input_ids must be integers in [0, 2**32)")
    hashes = page_hashes_fast(arr.astype("<u4"), page_size)
    return CacheRequest(tuple(hashes), int(arr.size), page_size, rid)


def check_page_fits_blocks(page_size: int, block_tokens: int) -> None:
    """A page must hold whole blocks or a block whole pages, or a page's hit would not be the
    trace's: a page straddling two blocks would hit only where both repeat."""
    if page_size <= 0 or block_tokens <= 0:
        raise ValueError(f"page size ({page_size}) and block size ({block_tokens}) must be positive")
    if block_tokens % page_size and page_size % block_tokens:
        raise ValueError(
            f"--page-size {page_size} does not divide the trace's block of {block_tokens} tokens, nor is it a "
            f"multiple of it; use a --page-size that divides {block_tokens} or is a multiple of it"
        )


def request_from_block_ids(
    hash_ids: Sequence[int], input_length: int | None, page_size: int, rid: str = "",
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
) -> CacheRequest:
    """A Mooncake-style request: every block is cached whole, hits are capped at ``input_length``.

    An ``input_length`` beyond the blocks is kept: the tokens past the last block have no block
    id, so they are input that never hits (as the trace's own figure counts them).
    """
    check_page_fits_blocks(page_size, block_tokens)
    if any(int(b) < 0 for b in hash_ids):
        raise ValueError("hash_ids must be non-negative integers")
    total = len(hash_ids) * block_tokens
    if input_length is None:
        input_length = total
    if input_length < 0:
        raise ValueError(f"input_length {input_length} must not be negative")
    hashes = page_hashes_fast(tokens_from_blocks(hash_ids, block_tokens), page_size)
    return CacheRequest(tuple(hashes), int(input_length), page_size, rid)
