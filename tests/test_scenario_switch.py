"""The seed's scenario on a real node process with the real ``file`` backend (hicache-file):
while a replay runs, detach L3 (storage hits stop, nothing fails), attach it again (storage
hits come back from the pages written before), switch to a second backend; no request fails
and no page fails verification throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _node_helpers import child_env, dir_store

from hicache_core.node.server import NodeProcess
from hicache_core.plugins.registry import default_registry
from hicache_core.replay import load_trace, sample_trace_path
from hicache_core.replay.demo import check_scenario
from hicache_core.replay.scenario import BackendChoice, switch_scenario

KEY = "scenario-key"
REQUESTS = 600


def test_file_backend_is_installed() -> None:
    """CI installs hicache-file; the scenario below must run against it, never be skipped."""
    names = {row.name: row.status for row in default_registry().describe()}
    assert names.get("file") == "available", (
        "the scenario needs the file backend: pip install -e plugins/hicache_file"
    )


@pytest.fixture(scope="module")
def requests_slice():  # type: ignore[no-untyped-def]
    return load_trace(sample_trace_path(), REQUESTS)


@pytest.fixture
def node(tmp_path: Path, requests_slice) -> Iterator[tuple[NodeProcess, Path]]:  # type: ignore[no-untyped-def]
    largest = max(len(r.hash_ids) for r in requests_slice) * 512
    l3 = tmp_path / "l3-file"
    proc = NodeProcess(
        ["--admin-api-key", KEY, "--page-size", "128", "--device-capacity-tokens", str(largest),
         "--hicache-ratio", "2", "--hicache-storage-backend", "file",
         "--hicache-storage-backend-extra-config", json.dumps({"path": str(l3)})],
        log_path=tmp_path / "node.log", env=child_env(),
    ).start()
    try:
        yield proc, tmp_path
    finally:
        proc.stop()


def test_detach_attach_switch_under_traffic(node: tuple[NodeProcess, Path], requests_slice) -> None:  # type: ignore[no-untyped-def]
    proc, tmp = node
    first = BackendChoice("file", {"path": str(tmp / "l3-file")}, "file")
    second = BackendChoice("dynamic", dir_store(tmp / "l3-second"), "dirstore")
    result = switch_scenario(proc.url, KEY, requests_slice, first, second, concurrency=4, progress=False)
    summary = result.summary()
    assert check_scenario(summary) == [], (summary["phases"], summary["events"], proc.log_tail())
    phases = {p["phase"]: p for p in summary["phases"]}
    assert list(phases) == ["attached file", "detached", "re-attached file", "switched to dirstore"]
    assert all(p["failed_requests"] == 0 and p["verify_errors"] == 0 for p in phases.values())
    assert phases["attached file"]["hit_tokens"]["storage"] > 0
    assert phases["detached"]["hit_tokens"]["storage"] == 0
    assert phases["re-attached file"]["hit_tokens"]["storage"] > 0
    # Every request after the switch was served with the second backend in force.
    switched = [r for r in result.records if r.phase == "switched to dirstore"]
    assert switched and all(r.storage_backend == "dynamic" for r in switched)
    assert any((tmp / "l3-second").iterdir()), "the second backend received no pages"
    assert summary["node_verify_errors"] == 0
    assert summary["bytes_stored"] > 0


def test_demo_command_runs_the_scenario(tmp_path: Path) -> None:
    """The README's quick start, shortened: exit 0, tables printed, plot written."""
    env = {k: v for k, v in os.environ.items()}
    out = subprocess.run(
        [sys.executable, "-m", "hicache_core.cli.main", "demo", "--workdir", str(tmp_path), "--limit", "300"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "demo passed" in out.stdout and "phases" in out.stdout
    plot = tmp_path / "hicache_demo.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
