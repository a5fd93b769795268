"""The node with L1 in CUDA memory and L2 pinned: loads are verified on the device.

Bandwidth is measured by ``python -m hicache_core.node.bench`` (a benchmark, not a test)."""

from __future__ import annotations

import pytest
import torch
from _node_helpers import small_node

from hicache_core.node import request_from_token_ids
from hicache_core.node.bench import measure

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine"),
]


def test_l1_on_cuda_with_pinned_l2() -> None:
    node = small_node(device="cuda")
    try:
        rank = node.ranks[0]
        assert rank.device.buffer.is_cuda and rank.host_pool.pin_memory
        a = request_from_token_ids(list(range(8 * 16)), 16)
        node.process(a)
        for i in range(1, 2):  # one other request: A leaves L1 (8 pages), stays in L2 (16)
            node.process(request_from_token_ids(list(range(i * 10_000, i * 10_000 + 128)), 16))
        res = node.process(a)
        assert res.cached["host"] == 128 and res.verify_errors == 0
    finally:
        node.close()


def test_bench_moves_verified_pages_to_the_gpu() -> None:
    r = measure(preset="llama3-8b", page_size=64, gib=0.5, repeats=2)
    assert r["gpu"] and r["pinned"] and r["verify_errors"] == 0 and r["node_gib_s"] > 0
