"""L3 failing under traffic: failures are misses, never failed requests or wrong bytes.

Uses the controller's failure injection around a real directory-of-files backend; the
breaker detaches L3 after consecutive failures and re-attaches it once it is healthy."""

from __future__ import annotations

import time
from pathlib import Path

from _node_helpers import dir_store

from hicache_core.controller import fault_switch
from hicache_core.node import Node, NodeConfig
from hicache_core.replay import LocalTarget, load_trace, prefix_reuse, replay, sample_trace_path

REQUESTS = 160


def _node(tmp_path: Path, faults: dict[str, object]) -> Node:
    reqs = load_trace(sample_trace_path(), REQUESTS)
    largest = max(len(r.hash_ids) for r in reqs) * 512
    return Node(NodeConfig(page_size=128, device_capacity_tokens=largest, hicache_ratio=2.0,
                           breaker_threshold=3, probe_interval_s=0.1,
                           storage_backend="dynamic",
                           storage_extra_config={**dir_store(tmp_path / "l3"), "fault_injection": faults}))


def test_random_backend_failures_are_only_misses(tmp_path: Path) -> None:
    node = _node(tmp_path, {"page_fail_prob": 0.2, "delay_ms": [0, 2], "seed": 7})
    reqs = load_trace(sample_trace_path(), REQUESTS)
    try:
        s = replay(LocalTarget(node, owns=False), reqs, concurrency=2, progress=False).summary()
        assert s["failed_requests"] == 0 and s["verify_errors"] == 0 and s["node_verify_errors"] == 0
        assert sum(s["hit_tokens"].values()) <= prefix_reuse(reqs).hit_tokens
        assert s["hit_tokens"]["storage"] > 0  # L3 still serves the pages that did land
        assert node.ranks[0].counters.backup_pages_failed > 0  # failed writes were counted
    finally:
        node.close()


def test_breaker_detaches_and_reattaches_under_traffic(tmp_path: Path) -> None:
    switch = f"node-breaker-{time.monotonic_ns()}"
    node = _node(tmp_path, {"switch": switch})
    reqs = load_trace(sample_trace_path(), REQUESTS)
    ctl = node.ranks[0].controller

    def break_l3() -> str:
        fault_switch(switch).fail_all = True
        return "L3 failing"

    def heal_l3() -> str:
        fault_switch(switch).fail_all = False
        deadline = time.monotonic() + 10
        while not ctl.attached and time.monotonic() < deadline:
            time.sleep(0.05)
        return "L3 healed"

    n = len(reqs)
    target = LocalTarget(node, owns=False)
    try:
        result = replay(target, reqs, actions={n // 3: break_l3, 2 * n // 3: heal_l3}, phase="healthy",
                        progress=False)
        s = result.summary()
        assert s["failed_requests"] == 0 and s["verify_errors"] == 0
        status = ctl.status()
        assert status["breaker"]["trips"] >= 1 and status["state"] == "attached"
        phases = {p["phase"]: p for p in s["phases"]}
        assert list(phases) == ["healthy", "L3 failing", "L3 healed"]
        assert phases["L3 failing"]["hit_tokens"]["storage"] == 0
        assert phases["L3 healed"]["hit_tokens"]["storage"] > 0  # re-attached by the breaker's probe
    finally:
        fault_switch(switch).fail_all = False
        node.close()
