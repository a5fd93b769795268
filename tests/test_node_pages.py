"""Page bytes: generation, verification, the host-pool codec, request hashing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _node_helpers import TESTS_DIR  # noqa: F401  (sets torch threads)

from hicache_core.keys import page_hashes
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.node.host_pages import HostPages
from hicache_core.node.kvgen import expected_pages, mismatched_pages
from hicache_core.node.presets import PRESETS, resolve_shape
from hicache_core.node.tokens import (
    block_token_ids,
    page_hashes_fast,
    request_from_block_ids,
    request_from_token_ids,
)

HASHES = [f"{i:064x}" for i in range(1, 7)]


def test_expected_pages_are_a_function_of_the_hash() -> None:
    a = expected_pages(HASHES, 256)
    b = expected_pages(list(reversed(HASHES)), 256)
    assert torch.equal(a, b.flip(0))
    assert len({bytes(r.numpy()) for r in a}) == len(HASHES)


@pytest.mark.parametrize("damage", ["flip_bit", "other_page", "swap_halves", "zero_tail"])
def test_verification_catches_wrong_bytes(damage: str) -> None:
    rows = expected_pages(HASHES, 512).clone()
    if damage == "flip_bit":
        rows[3, 100] ^= 0x10
    elif damage == "other_page":
        rows[3] = rows[4]
    elif damage == "swap_halves":
        rows[3] = torch.cat([rows[3, 256:], rows[3, :256]])
    else:
        rows[3, 400:] = 0
    assert mismatched_pages(HASHES, rows) == [3]


@pytest.mark.parametrize(("layout", "mla"), list(itertools.product(
    ["layer_first", "page_first", "page_first_direct"], [False, True])))
def test_host_codec_matches_the_zero_copy_pieces(layout: str, mla: bool) -> None:
    pool = HostKVPool(64, 8, 3, 2, 4, torch.bfloat16, layout, mla)
    codec = HostPages(pool)
    pages = [5, 0, 7, 2]
    rows = expected_pages(HASHES[:4], pool.page_bytes)
    codec.write(pages, rows)
    assert torch.equal(codec.read(pages), rows)
    for page, row in zip(pages, rows):
        # The row is exactly the page's pieces as a zero-copy backend sees them.
        assert b"".join(bytes(v) for v in pool.page_memoryviews(page)) == bytes(row.numpy())
        assert torch.equal(torch.cat(codec.pieces(page)), row)
    untouched = [p for p in range(pool.page_num) if p not in pages]
    assert not codec.read(untouched).any()


def test_fast_hashes_equal_sglang_chain() -> None:
    tokens = (np.arange(1000, dtype=np.uint64) * 2654435761) % (2**32)
    assert page_hashes_fast(tokens.astype("<u4"), 64) == page_hashes(tokens.tolist(), 64)


def test_block_requests_share_hashes_only_with_equal_prefixes() -> None:
    a = request_from_block_ids([7, 8, 9], 1500, 64)
    b = request_from_block_ids([7, 8, 10], 1536, 64)
    c = request_from_block_ids([1, 8, 9], 1536, 64)
    assert a.page_hashes[:16] == b.page_hashes[:16] and a.page_hashes[16] != b.page_hashes[16]
    assert not set(a.page_hashes) & set(c.page_hashes)  # same block ids after another prefix
    assert a.pages == 24 and a.input_tokens == 1500  # whole blocks cached, input capped
    assert not np.array_equal(block_token_ids(1), block_token_ids(2))


def test_token_requests_leave_the_partial_page_unhashed() -> None:
    req = request_from_token_ids(list(range(100)), 16)
    assert req.pages == 6 and req.input_tokens == 100


@pytest.mark.parametrize(("call", "match"), [
    (lambda: request_from_block_ids([1, 2], -1, 64), "input_length -1"),
    (lambda: request_from_block_ids([1, 2], 100, 96), "does not divide"),
    (lambda: request_from_block_ids([1, -2], 100, 64), "non-negative"),
    (lambda: request_from_token_ids([1, -5], 16), r"\[0, 2\*\*32\)"),
    (lambda: resolve_shape("gpt-9"), "unknown model preset"),
    (lambda: resolve_shape("tiny", dtype="int3"), "unknown KV dtype"),
])
def test_bad_input_names_the_fix(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_presets_have_the_real_kv_sizes() -> None:
    # LLaMA3-70B: 80 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes = 320 KiB per token.
    assert PRESETS["llama3-70b"].bytes_per_token == 320 * 1024
    assert PRESETS["deepseek-v3"].bytes_per_token == 61 * 576 * 2
    assert PRESETS["tiny"].bytes_per_token == 16


def test_l2_size_follows_sglang_flags() -> None:
    from hicache_core.node import NodeConfig

    tiny = resolve_shape("tiny")  # 16 B/token
    assert NodeConfig(shape=tiny, page_size=64, device_capacity_tokens=1024, hicache_ratio=3).host_tokens() == 3072
    # --hicache-size (GB, 10^9 bytes) overrides the ratio; rounded down to whole pages.
    by_size = NodeConfig(shape=tiny, page_size=64, device_capacity_tokens=1024, hicache_ratio=3, hicache_size_gb=0.001)
    assert by_size.host_tokens() == (10**6 // 16) // 64 * 64
    explicit = NodeConfig(shape=tiny, page_size=64, device_capacity_tokens=1024, host_capacity_tokens=200,
                          hicache_size_gb=5)
    assert explicit.host_tokens() == 192
    with pytest.raises(ValueError, match="--dp-size"):
        NodeConfig(dp_size=0).validate()
