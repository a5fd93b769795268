"""``hicache serve`` nodes on Mooncake: two nodes share one cluster; a master dies under a node.

Sharing: what A computed, B loads from L3.

Node A serves the first half of a slice of the bundled conversation trace (write-through
backs its pages up to Mooncake); node B then serves follow-up turns: each of A's prompts
without its last block, plus a new block (in this early slice of the trace the second half
shares only the first block with the first half, so the follow-ups are built from it). B
starts with empty L1 and L2, so the prefix tokens it finds cached come from the storage tier,
and the node verifies each loaded page against the KV it would have computed (zero
verification errors means no wrong or stale bytes were served).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hicache_mooncake.cluster import CLIENT_ENV, LocalMooncakeCluster

node_server = pytest.importorskip(
    "hicache_core.node.server", reason="the reference node (hicache serve) is not in this hicache-core"
)

SLICE = 40
BLOCK = 512  # tokens per trace block


def _trace_slice() -> list[dict[str, Any]]:
    from hicache_core.replay.trace import sample_trace_path

    with open(sample_trace_path()) as fh:
        return [json.loads(line) for _, line in zip(range(SLICE), fh)]


class ServeProcess(node_server.NodeProcess):  # type: ignore[misc]
    """One ``hicache serve`` on 127.0.0.1 with the mooncake backend attached, spawned (not yet ready)."""

    def __init__(self, name: str, extra_config: dict[str, Any], workdir: Path) -> None:
        super().__init__([
            "--model-preset", "tiny", "--page-size", "64",
            "--hicache-storage-backend", "mooncake",
            "--hicache-storage-backend-extra-config", json.dumps(extra_config),
            "--hicache-write-policy", "write_through",
        ], log_path=workdir / f"{name}.log", env=CLIENT_ENV)
        self.new_session = True
        self.spawn()  # both nodes start at once; the fixtures wait for each with wait_ready

    def generate(self, req: dict[str, Any], rid: str) -> dict[str, Any]:
        body = {"hash_ids": req["hash_ids"], "input_length": req["input_length"], "rid": rid}
        r = httpx.post(f"{self.url}/generate", json=body, timeout=120)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = httpx.get(f"{self.url}/hicache/status", timeout=30).json()
        return out

    def wait_backups(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.status()
            if all(r["storage"].get("queues", {}).get("backup", 0) == 0 for r in st["ranks"]):
                return
            time.sleep(0.2)
        raise AssertionError("node A's backups to Mooncake did not finish")


@pytest.fixture
def two_nodes(mooncake_cluster: LocalMooncakeCluster, tmp_path: Path) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    extra = mooncake_cluster.extra_config()
    nodes = [ServeProcess("node_a", extra, tmp_path), ServeProcess("node_b", extra, tmp_path)]
    try:
        for n in nodes:
            n.wait_ready(60)
        yield nodes[0], nodes[1]
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
def test_node_b_loads_what_node_a_computed(two_nodes: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = two_nodes
    first = _trace_slice()[: SLICE // 2]
    follow_ups = [
        {"hash_ids": [*r["hash_ids"][:-1], 10_000_000 + i], "input_length": len(r["hash_ids"]) * BLOCK}
        for i, r in enumerate(first) if len(r["hash_ids"]) >= 3
    ]
    assert follow_ups, "the trace slice has no request of three blocks or more"
    # Block 0 (a shared system prompt) comes from storage once, then from B's own L1.
    from_storage_at_least = sum((len(r["hash_ids"]) - 2) * BLOCK for r in follow_ups)

    a_results = [a.generate(r, f"a{i}") for i, r in enumerate(first)]
    assert sum(x["verify_errors"] for x in a_results) == 0
    a.wait_backups()
    a_totals = a.status()["totals"]
    assert a_totals["bytes_stored"] > 0, a_totals
    assert a_totals["backup_pages_failed"] == 0, a_totals

    b_results = [b.generate(r, f"b{i}") for i, r in enumerate(follow_ups)]
    storage_hits = sum(x["cached_tokens_details"].get("storage", 0) for x in b_results)
    print(f"node B: {storage_hits} storage-hit tokens over {len(follow_ups)} requests "
          f"(prefix tokens only A computed: {from_storage_at_least})")
    assert storage_hits >= 0.9 * from_storage_at_least, b_results[:3]
    assert sum(x["verify_errors"] for x in b_results) == 0
    b_totals = b.status()["totals"]
    assert b_totals["cached_tokens"]["storage"] == storage_hits
    assert b_totals["verify_errors"] == 0
    assert b_totals["verified_pages"] > 0


def _state(node: ServeProcess) -> str:
    return str(node.status()["storage_state"])


def _wait_for(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_master_killed_under_a_node(private_cluster: LocalMooncakeCluster, tmp_path: Path) -> None:
    """kill -9 the master while a node serves: no request fails, the breaker takes L3 away,
    the node keeps serving from L1/L2; after a restart L3 comes back and serves no old page."""
    reqs = _trace_slice()
    extra = private_cluster.extra_config()
    a = ServeProcess("node_a", extra, tmp_path)
    c: ServeProcess | None = None
    try:
        a.wait_ready(60)
        before = reqs[:6]
        for i, r in enumerate(before):
            assert a.generate(r, f"pre{i}")["verify_errors"] == 0
        a.wait_backups()
        assert _state(a) == "attached"

        private_cluster.kill("master")
        during = [a.generate(r, f"during{i}") for i, r in enumerate(reqs[6:20])]
        again = [a.generate(r, f"again{i}") for i, r in enumerate(before)]
        assert all(x["verify_errors"] == 0 for x in during + again)
        # Pages A computed before the kill are still in its own L1/L2.
        assert sum(x["meta_info"]["cached_tokens"] for x in again) > 0
        _wait_for(lambda: _state(a) != "attached", "the breaker to take the dead backend away")

        private_cluster.start_master()
        private_cluster.wait_storage_mounted()
        # The controller probes the backend (health_check) and attaches it again by itself.
        _wait_for(lambda: _state(a) == "attached", "node A to re-attach after the master restart", 60)

        # A fresh node on the restarted cluster: the pre-kill pages are gone, never served stale.
        c = ServeProcess("node_c", extra, tmp_path)
        c.wait_ready(60)
        follow = [{"hash_ids": [*r["hash_ids"][:-1], 20_000_000 + i], "input_length": len(r["hash_ids"]) * BLOCK}
                  for i, r in enumerate(before) if len(r["hash_ids"]) >= 2]
        c_results = [c.generate(r, f"c{i}") for i, r in enumerate(follow)]
        assert sum(x["cached_tokens_details"].get("storage", 0) for x in c_results) == 0
        assert all(x["verify_errors"] == 0 for x in c_results)
        # ... and L3 works again: what A writes now, C can load.
        new = {"hash_ids": [30_000_000, 30_000_001, 30_000_002], "input_length": 3 * BLOCK}
        a.generate(new, "new")
        a.wait_backups()
        hit = c.generate({"hash_ids": [*new["hash_ids"][:2], 30_000_009], "input_length": 3 * BLOCK}, "c-new")
        assert hit["cached_tokens_details"].get("storage", 0) > 0 and hit["verify_errors"] == 0
    finally:
        a.stop()
        if c is not None:
            c.stop()
