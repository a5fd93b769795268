"""The trace's own prefix-reuse figure, and the node reproducing it on a slice of the trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _node_helpers import dir_store

from hicache_core.node import Node, NodeConfig
from hicache_core.replay import LocalTarget, load_trace, prefix_reuse, replay, sample_trace_path
from hicache_core.replay.trace import TraceRequest

FULL_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
SLICE = 300


def brute_force_token_hits(requests: list[TraceRequest]) -> int:
    """The README's rule written the slow, obvious way (prefix tuples)."""
    seen: set[tuple[int, ...]] = set()
    hits = 0
    for r in requests:
        k = 0
        while k < len(r.hash_ids) and tuple(r.hash_ids[: k + 1]) in seen:
            k += 1
        hits += min(k * 512, r.input_length)
        seen.update(tuple(r.hash_ids[: j + 1]) for j in range(len(r.hash_ids)))
    return hits


@pytest.fixture(scope="module")
def sample() -> list[TraceRequest]:
    return load_trace(sample_trace_path(), SLICE)


def test_reference_matches_the_obvious_computation(sample: list[TraceRequest]) -> None:
    fig = prefix_reuse(sample)
    assert fig.hit_tokens == brute_force_token_hits(sample)
    assert fig.input_tokens == sum(r.input_length for r in sample)
    assert 0 < fig.token_hit_ratio < 1


@pytest.mark.skipif(not FULL_TRACE.is_file(), reason=f"full trace not present at {FULL_TRACE}")
def test_full_trace_gives_the_published_figures() -> None:
    fig = prefix_reuse(load_trace(FULL_TRACE))
    # The figures shared/traces/README.md states for this file.
    assert fig.requests == 12031 and fig.distinct_blocks == 182790
    assert round(fig.block_hit_ratio * 100, 1) == 36.6
    assert round(fig.token_hit_ratio * 100, 1) == 37.4
    assert round(fig.span_seconds) == 3537


def _node(**kw: object) -> Node:
    return Node(NodeConfig(**kw))  # type: ignore[arg-type]


def test_unbounded_node_reproduces_the_trace_figure(sample: list[TraceRequest]) -> None:
    fig = prefix_reuse(sample)
    node = _node(page_size=64, device_capacity_tokens=(fig.distinct_blocks + 1) * 512)
    result = replay(LocalTarget(node), sample, progress=False)
    s = result.summary()
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0
    assert sum(s["hit_tokens"].values()) == fig.hit_tokens
    assert s["token_hit_ratio"] == pytest.approx(fig.token_hit_ratio, abs=1e-12)


def test_dp_ranks_share_the_bundled_trace(sample: list[TraceRequest]) -> None:
    """Every request of the sample starts with the same block: routing by the first page sent
    all 1,000 to one rank. Cache-aware routing (prefix affinity bounded by load) spreads them and
    keeps nearly all of the figure (a short shared prefix is not worth a busier rank)."""
    fig = prefix_reuse(sample)
    node = _node(page_size=64, device_capacity_tokens=(fig.distinct_blocks + 1) * 512, dp_size=2)
    s = replay(LocalTarget(node, owns=False), sample, progress=False).summary()
    routing = node.status()["routing"]
    node.close()
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0
    routed = [r["routed"] for r in routing["ranks"]]
    assert min(routed) >= 0.3 * len(sample), routed  # first-page hashing: [1000, 0]
    assert all(r["by_prefix"] > 0 for r in routing["ranks"])
    assert 0.9 * fig.hit_tokens <= sum(s["hit_tokens"].values()) <= fig.hit_tokens


def test_bounded_tiers_give_less(sample: list[TraceRequest]) -> None:
    fig = prefix_reuse(sample)
    node = _node(page_size=64, device_capacity_tokens=8192, hicache_ratio=2.0)
    s = replay(LocalTarget(node), sample, progress=False).summary()
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0
    assert sum(s["hit_tokens"].values()) < fig.hit_tokens
    assert s["hit_tokens"]["storage"] == 0


def test_small_tiers_with_l3_recover_the_whole_figure(sample: list[TraceRequest], tmp_path: Path) -> None:
    """L3 holds everything: reuse that L1/L2 lost comes back from storage, verified.

    L1 holds the largest request (as an engine's GPU must) but only ~3 % of the slice.
    """
    fig = prefix_reuse(sample)
    largest = max(len(r.hash_ids) for r in sample) * 512
    assert largest * 10 < fig.distinct_blocks * 512
    node = _node(page_size=128, device_capacity_tokens=largest, hicache_ratio=2.0,
                 storage_backend="dynamic", storage_extra_config=dir_store(tmp_path / "l3"))
    s = replay(LocalTarget(node), sample, progress=False).summary()
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0 and s["node_verify_errors"] == 0
    assert s["hit_tokens"]["storage"] > 0
    assert sum(s["hit_tokens"].values()) == fig.hit_tokens
    assert s["bytes_stored"] > 0 and s["bytes_loaded"] > 0


def test_paced_replay_follows_the_timestamps() -> None:
    reqs = [TraceRequest(i, i * 1000.0, 512, 1, (i,)) for i in range(4)]
    node = _node(page_size=64, device_capacity_tokens=4096)
    result = replay(LocalTarget(node), reqs, speed=10.0, progress=False)
    assert result.wall_seconds >= 0.3 * 0.9  # 3 s of trace at 10x


def test_bad_trace_line_names_its_number(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"timestamp": 0, "input_length": 10, "hash_ids": [1]}) + "\n{\"hash_ids\": 5}\n")
    with pytest.raises(ValueError, match=r"t.jsonl:2"):
        load_trace(bad)
