"""``hicache replay`` as a user runs it: in-process node, JSON summary, plot; and against a URL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hicache_core.node.server import NodeProcess
from hicache_core.replay import load_trace, prefix_reuse, sample_trace_path

KEYS = {"requests", "failed_requests", "input_tokens", "hit_tokens", "token_hit_ratio", "verify_errors",
        "bytes_loaded", "bytes_stored", "wall_seconds"}


def hicache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hicache_core.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def test_unbounded_json_summary_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "hits.png"
    out = hicache("replay", "--limit", "120", "--unbounded", "--json", "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert KEYS <= set(summary) and set(summary["hit_tokens"]) == {"device", "host", "storage"}
    ref = prefix_reuse(load_trace(sample_trace_path(), 120))
    assert summary["requests"] == 120 and summary["failed_requests"] == 0 and summary["verify_errors"] == 0
    assert summary["token_hit_ratio"] == ref.token_hit_ratio
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_replay_against_a_running_node(tmp_path: Path) -> None:
    with NodeProcess(["--page-size", "64", "--device-capacity-tokens", "65536"], log_path=tmp_path / "n.log") as node:
        out = hicache("replay", "--url", node.url, "--limit", "60", "--concurrency", "3")
        assert out.returncode == 0, out.stderr
        assert "token hit ratio" in out.stdout and "failed requests" in out.stdout
        again = hicache("replay", "--url", node.url, "--limit", "60", "--json")
        summary = json.loads(again.stdout)
        # The node kept its caches between the passes (the shared first block stays in L1).
        assert summary["hit_tokens"]["device"] > 0 and summary["failed_requests"] == 0
        assert summary["node_verify_errors"] == 0


def test_bad_trace_path_says_what_to_give(tmp_path: Path) -> None:
    out = hicache("replay", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2 and "Mooncake-format" in out.stderr
