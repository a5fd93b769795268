"""The node's tiers end to end, in process: L1/L2/L3 hits, write policies, verification,
eviction rules. L3 is a real directory of page files (the ``dynamic`` DirStore backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _node_helpers import dir_store, small_node

from hicache_core.node import Node, request_from_token_ids
from hicache_core.node.kvgen import expected_pages
from hicache_core.node.tiers import TierIndex

PAGE = 16


def req(first: int, pages: int, rid: str = ""):  # type: ignore[no-untyped-def]
    """A request of ``pages`` full pages of distinct tokens starting at ``first``."""
    return request_from_token_ids(list(range(first, first + pages * PAGE)), PAGE, rid)


def attach_dir(node: Node, path: Path) -> None:
    node.attach("dynamic", {**dir_store(path), "prefetch_threshold": PAGE})


def fill(node: Node, start: int, count: int, pages: int = 8) -> None:
    for i in range(count):
        node.process(req(start + i * 100_000, pages))


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    n = small_node()  # L1 8 pages, L2 16 pages
    attach_dir(n, tmp_path / "l3")
    yield n
    n.close()


def test_hits_come_from_each_tier_in_turn(node: Node) -> None:
    a = req(0, 8)
    first = node.process(a)
    assert first.cached == {"device": 0, "host": 0, "storage": 0} and first.computed_tokens == 128
    assert node.process(a).cached["device"] == 128
    fill(node, 1_000_000, 1)  # A leaves L1 (8 pages) but stays in L2 (16 pages)
    assert node.process(a).cached == {"device": 0, "host": 128, "storage": 0}
    fill(node, 2_000_000, 3)  # A leaves L2 too; it was written through to L3
    assert node.wait_backups(10)
    res = node.process(a)
    assert res.cached == {"device": 0, "host": 0, "storage": 128}
    assert res.storage_backend == "dynamic"
    totals = node.status()["totals"]
    assert totals["verify_errors"] == 0 and totals["verified_pages"] >= 16
    assert totals["bytes_stored"] >= 8 * node.ranks[0].page_bytes


def test_prefix_stops_at_the_first_miss(node: Node) -> None:
    node.process(req(0, 4))
    res = node.process(req(0, 8))  # pages 0-3 cached, 4-7 new
    assert res.cached["device"] == 64 and res.computed_tokens == 64


def test_detached_node_serves_without_l3(tmp_path: Path) -> None:
    n = small_node()
    try:
        a = req(0, 8)
        n.process(a)
        fill(n, 1_000_000, 3)
        res = n.process(a)
        assert res.cached == {"device": 0, "host": 0, "storage": 0} and res.storage_backend is None
        assert n.status()["totals"]["verify_errors"] == 0
    finally:
        n.close()


def test_corrupt_l2_page_is_caught_and_recomputed(node: Node) -> None:
    a = req(0, 8)
    node.process(a)
    fill(node, 1_000_000, 1)  # A now only in L2
    rank = node.ranks[0]
    victim = a.page_hashes[5]
    entry = rank.l2.get(victim)
    assert entry is not None
    rank.host.write([entry.slot], torch.zeros((1, rank.page_bytes), dtype=torch.uint8))
    res = node.process(a)
    assert res.verify_errors == 1
    assert res.cached["host"] == 5 * PAGE  # the hit ends before the bad page
    again = node.process(a)  # recomputed bytes are right
    assert again.verify_errors == 0 and again.cached["device"] == 128


def test_corrupt_l3_page_is_caught(node: Node, tmp_path: Path) -> None:
    a = req(0, 8)
    node.process(a)
    fill(node, 1_000_000, 3)
    assert node.wait_backups(10)
    suffix = node.ranks[0].controller.status()["namespace_suffix"]
    page_file = tmp_path / "l3" / f"{a.page_hashes[2]}{suffix}.page"
    assert page_file.is_file()
    page_file.write_bytes(bytes(expected_pages([a.page_hashes[3]], node.ranks[0].page_bytes)[0].numpy()))
    res = node.process(a)
    assert res.verify_errors == 1 and res.cached["storage"] == 2 * PAGE


def test_write_back_moves_pages_down_only_on_eviction(tmp_path: Path) -> None:
    n = small_node(write_policy="write_back")
    attach_dir(n, tmp_path / "l3")
    try:
        rank = n.ranks[0]
        a = req(0, 8)
        n.process(a)
        assert len(rank.l2) == 0  # in L1 only
        fill(n, 1_000_000, 1)
        assert all(h in rank.l2 for h in a.page_hashes)  # evicted from L1 into L2
        assert rank.counters.backup_pages_queued == 0  # nothing written to L3 yet
        fill(n, 2_000_000, 3)  # L2 evictions write back to L3
        assert n.wait_backups(10)
        assert rank.counters.backup_pages_queued > 0
        assert n.process(a).cached["storage"] == 128
    finally:
        n.close()


def test_write_through_selective_waits_for_a_second_hit(tmp_path: Path) -> None:
    n = small_node(write_policy="write_through_selective")
    attach_dir(n, tmp_path / "l3")
    try:
        rank = n.ranks[0]
        a = req(0, 4)
        n.process(a)
        n.process(a)
        assert not any(h in rank.l2 for h in a.page_hashes)
        n.process(a)  # second hit: copied to L2 and backed up
        assert all(h in rank.l2 for h in a.page_hashes)
        assert n.wait_backups(10)
        assert rank.counters.backup_pages_queued == 4
    finally:
        n.close()


def test_knobs_only_reattach_keeps_pages_known_stored(tmp_path: Path) -> None:
    """Same backend, same store, new prefetch knobs: pages already in L3 are not written again."""
    n = small_node(write_policy="write_through_selective")
    attach_dir(n, tmp_path / "l3")
    try:
        rank = n.ranks[0]
        a = req(0, 4)
        for _ in range(3):
            n.process(a)
        assert n.wait_backups(10) and rank.counters.backup_pages_queued == 4
        n.attach("dynamic", {**dir_store(tmp_path / "l3"), "prefetch_threshold": 2 * PAGE})  # knobs only
        n.process(a)  # a hit that would back the pages up again were they not known stored
        assert n.wait_backups(10) and rank.counters.backup_pages_queued == 4
        n.detach()
        attach_dir(n, tmp_path / "l3")  # a fresh attach: what L3 holds is unknown again
        n.process(a)
        assert n.wait_backups(10) and rank.counters.backup_pages_queued == 8
    finally:
        n.close()


def test_request_larger_than_every_tier_is_served(node: Node) -> None:
    big = req(0, 40)  # L1 holds 8 pages, L2 16
    res = node.process(big)
    assert res.computed_tokens == 40 * PAGE and res.verify_errors == 0
    assert node.wait_backups(10)
    again = node.process(big)
    assert sum(again.cached.values()) > 0 and again.verify_errors == 0


def test_pages_in_use_or_backing_up_are_never_evicted() -> None:
    index = TierIndex("host", 4)
    for i, h in enumerate("abcd"):
        index.add(h, i)
    index.get("a").refs = 1  # type: ignore[union-attr]
    index.get("b").backups = 1  # type: ignore[union-attr]
    index.get("c").evict_when_backed_up = True  # type: ignore[union-attr]
    assert [h for h, _ in index.evictable(4)] == ["d"]
    index.touch("d")
    assert index.leading_hits(("a", "b", "x", "c")) == 2


@pytest.mark.parametrize(("preset", "layout"), [("tiny-mla", "layer_first"), ("small", "page_first_direct")])
def test_shapes_and_layouts_round_trip_through_l3(tmp_path: Path, preset: str, layout: str) -> None:
    from hicache_core.node import NodeConfig, resolve_shape

    n = Node(NodeConfig(shape=resolve_shape(preset), page_size=PAGE, device_capacity_tokens=8 * PAGE,
                        hicache_ratio=2.0, mem_layout=layout))
    attach_dir(n, tmp_path / "l3")
    try:
        a = req(0, 8)
        n.process(a)
        fill(n, 1_000_000, 3)
        assert n.wait_backups(10)
        res = n.process(a)
        assert res.cached["storage"] == 128 and res.verify_errors == 0
    finally:
        n.close()


def test_dp_ranks_each_have_their_own_tiers(tmp_path: Path) -> None:
    n = small_node(dp_size=2)
    try:
        reqs = [req(i * 1000, 4) for i in range(12)]
        ranks = {n.route(r).rank for r in reqs}
        assert ranks == {0, 1}
        for r in reqs:
            n.process(r)
        statuses = [rk.status() for rk in n.ranks]
        assert all(s["counters"]["requests"] > 0 for s in statuses)
        msg = n.attach("dynamic", dir_store(tmp_path / "l3"))
        assert "rank 0" in msg and "rank 1" in msg
        assert all(rk.controller.attached for rk in n.ranks)
    finally:
        n.close()


def test_touch_chain_evicts_a_chain_from_its_tail() -> None:
    """A request's first page becomes the most recent: its tail goes first, never its head."""
    from hicache_core.node.tiers import TierIndex

    index = TierIndex("L2", capacity=8)
    for slot, h in enumerate(("a", "b", "c", "x")):
        index.add(h, slot)
    index.touch_chain(("a", "b", "c"))
    assert [h for h, _ in index.evictable(4)] == ["x", "c", "b", "a"]
