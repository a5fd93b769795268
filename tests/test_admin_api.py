"""SGLang's admin API on a real node process (uvicorn on 127.0.0.1, a free port): auth,
status codes, field names, DP fan-out with rollback; the ``hicache storage`` client; the
strict idle rule."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _node_helpers import child_env, dir_store, small_node

from hicache_core.node.app import ADMIN_KEY_MISSING
from hicache_core.node.server import NodeProcess
from hicache_core.plugins.registry import BackendRegistry

KEY = "test-admin-key-7f3a"
NODE_FLAGS = ["--page-size", "16", "--device-capacity-tokens", "256", "--dp-size", "2"]


@pytest.fixture(scope="module")
def node_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = NodeProcess(["--admin-api-key", KEY, *NODE_FLAGS], log_path=log, env=child_env()).start()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def keyless_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("keyless") / "node.log"
    proc = NodeProcess(["--page-size", "16", "--device-capacity-tokens", "256"], log_path=log).start()
    try:
        yield proc.url
    finally:
        proc.stop()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def put(url: str, body: dict[str, object], key: str = KEY) -> httpx.Response:
    return httpx.put(url + "/hicache/storage-backend", json=body, headers=auth(key), timeout=60)


def dyn(path: Path, **extra: object) -> dict[str, object]:
    return {"hicache_storage_backend": "dynamic",
            "hicache_storage_backend_extra_config_json": json.dumps({**dir_store(path), **extra})}


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET"])
def test_without_an_admin_key_the_endpoints_refuse(keyless_url: str, method: str) -> None:
    resp = httpx.request(method, keyless_url + "/hicache/storage-backend", headers=auth(),
                         json={"hicache_storage_backend": "file"} if method == "PUT" else None)
    assert resp.status_code == 400
    assert resp.json()["error"] == ADMIN_KEY_MISSING


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}])
def test_wrong_or_missing_key_is_401(node_url: str, headers: dict[str, str]) -> None:
    for method in ("GET", "DELETE", "PUT"):
        resp = httpx.request(method, node_url + "/hicache/storage-backend", headers=headers,
                             json={"hicache_storage_backend": "file"} if method == "PUT" else None)
        assert resp.status_code == 401, method


def test_attach_switch_detach_with_sglang_fields(node_url: str, tmp_path: Path) -> None:
    view = httpx.get(node_url + "/hicache/storage-backend", headers=auth()).json()
    assert set(view) >= {"hicache_storage_backend", "hicache_storage_backend_extra_config_json",
                         "hicache_storage_prefetch_policy", "hicache_write_policy"}
    assert view["hicache_storage_backend"] is None

    resp = put(node_url, {**dyn(tmp_path / "a"), "hicache_write_policy": "write_back"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and "rank 0" in body["message"] and "rank 1" in body["message"]
    view = httpx.get(node_url + "/hicache/storage-backend", headers=auth()).json()
    assert view["hicache_storage_backend"] == "dynamic" and view["hicache_write_policy"] == "write_back"
    assert json.loads(view["hicache_storage_backend_extra_config_json"])["path"] == str(tmp_path / "a")

    other = put(node_url, dyn(tmp_path / "b"))  # SGLang: a second attach is refused
    assert other.status_code == 400 and other.json()["success"] is False
    assert "already attached" in other.json()["message"]
    switched = httpx.put(node_url + "/hicache/storage-backend?replace=true", json=dyn(tmp_path / "b"),
                         headers=auth(), timeout=60)
    assert switched.status_code == 200, switched.text
    status = httpx.get(node_url + "/hicache/status").json()
    assert status["storage_state"] == "attached"
    assert all(r["storage"]["extra_config"]["path"] == str(tmp_path / "b") for r in status["ranks"])

    for _ in range(2):  # detach is idempotent
        resp = httpx.delete(node_url + "/hicache/storage-backend", headers=auth(), timeout=60)
        assert resp.status_code == 200 and resp.json()["success"] is True
    assert httpx.get(node_url + "/hicache/storage-backend", headers=auth()).json()["hicache_storage_backend"] is None


def test_bad_attach_requests_say_why(node_url: str, tmp_path: Path) -> None:
    bad_json = put(node_url, {"hicache_storage_backend": "dynamic",
                              "hicache_storage_backend_extra_config_json": "{not json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["message"]
    unknown = put(node_url, {"hicache_storage_backend": "nosuchstore"})
    assert unknown.status_code == 400 and "nosuchstore" in unknown.json()["message"]
    policy = put(node_url, {**dyn(tmp_path / "p"), "hicache_storage_prefetch_policy": "sometimes"})
    assert policy.status_code == 400 and "best_effort" in policy.json()["message"]


def test_dp_attach_is_all_or_nothing(node_url: str, tmp_path: Path) -> None:
    assert put(node_url, dyn(tmp_path / "good")).status_code == 200
    failing = {"hicache_storage_backend": "dynamic", "hicache_storage_backend_extra_config_json": json.dumps(
        {**dir_store(tmp_path / "bad"), "class_name": "FailOnRank", "fail_rank": 1})}
    resp = httpx.put(node_url + "/hicache/storage-backend?replace=1", json=failing, headers=auth(), timeout=60)
    assert resp.status_code == 400
    msg = resp.json()["message"]
    assert "rank 0:" in msg and "rank 1:" in msg and "FailOnRank" in msg
    # Rank 0 had switched; it was rolled back to the previous backend.
    ranks = httpx.get(node_url + "/hicache/status").json()["ranks"]
    assert [r["storage"]["extra_config"]["path"] for r in ranks] == [str(tmp_path / "good")] * 2
    assert httpx.delete(node_url + "/hicache/storage-backend", headers=auth()).status_code == 200


def test_requests_health_metrics_status(node_url: str) -> None:
    ok = httpx.post(node_url + "/generate", json={"input_ids": list(range(100)), "rid": "x"}).json()
    assert ok["meta_info"]["prompt_tokens"] == 100 and ok["rid"] == "x"
    again = httpx.post(node_url + "/generate", json={"input_ids": list(range(100))}).json()
    assert again["cached_tokens_details"]["device"] == 96  # 6 full pages of 16
    blocks = httpx.post(node_url + "/generate", json={"hash_ids": [1, 2], "input_length": 700}).json()
    assert blocks["input_tokens"] == 700
    for body in ({}, {"hash_ids": [1], "input_length": -1}, {"input_ids": [1], "hash_ids": [1]}):
        bad = httpx.post(node_url + "/generate", json=body)
        assert bad.status_code == 400 and bad.json()["error"]["message"]
    assert httpx.get(node_url + "/health").json()["status"] == "ok"
    metrics = httpx.get(node_url + "/metrics").text
    assert 'hicache_node_cached_tokens_total{rank="' in metrics and "hicache_breaker_state" in metrics
    status = httpx.get(node_url + "/hicache/status").json()
    assert status["totals"]["requests"] >= 3 and status["totals"]["verify_errors"] == 0
    assert {"device", "host"} <= set(status["tiers"]) and "breaker" in status["ranks"][0]["storage"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "storage", *args],
                          capture_output=True, text=True, timeout=120, env={**child_env(), **_env()})


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_storage_cli(node_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "extra.json"
    cfg.write_text(json.dumps(dir_store(tmp_path / "cli")))
    att = run_cli("attach", "--url", node_url, "--api-key", KEY, "--backend", "dynamic",
                  "--extra-config", f"@{cfg}", "--write-policy", "write_through")
    assert att.returncode == 0, att.stderr
    assert json.loads(att.stdout)["success"] is True
    st = run_cli("status", "--url", node_url, "--api-key", KEY)
    assert st.returncode == 0 and json.loads(st.stdout)["hicache_storage_backend"] == "dynamic"
    wrong = run_cli("status", "--url", node_url, "--api-key", "nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    det = run_cli("detach", "--url", node_url, "--api-key", KEY)
    assert det.returncode == 0 and json.loads(det.stdout)["success"] is True
    missing = run_cli("attach", "--url", node_url, "--api-key", KEY, "--backend", "dynamic",
                      "--extra-config", "[1, 2]")
    assert missing.returncode == 2 and "JSON object" in missing.stderr


def test_missing_file_plugin_names_the_package() -> None:
    node = small_node()
    node.ranks[0].controller.registry = BackendRegistry(entry_points_override=[])
    try:
        with pytest.raises(Exception, match="pip install hicache-file"):
            node.attach("file", {"path": "/tmp/unused"})
    finally:
        node.close()


def test_strict_idle_rejects_like_sglang(tmp_path: Path) -> None:
    node = small_node(strict_idle=True)
    rank = node.ranks[0]
    try:
        with rank._lock:  # the scheduler is busy: a request will queue behind it
            worker = threading.Thread(target=node.process, args=(rank_req(),))
            worker.start()
            deadline = time.monotonic() + 5
            while rank.idle_reason() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(Exception, match=r"Reject attach: scheduler is not idle\. #queue-req=1 #running-req=0"):
                node.attach("dynamic", dir_store(tmp_path / "s"))
        worker.join(10)
        assert "attached" in node.attach("dynamic", dir_store(tmp_path / "s"))
    finally:
        node.close()


def rank_req():  # type: ignore[no-untyped-def]
    from hicache_core.node import request_from_token_ids

    return request_from_token_ids(list(range(64)), 16)


def test_key_is_checked_before_the_body(node_url: str) -> None:
    """As in SGLang, a caller without the key gets 401 whatever it sends, never a 422."""
    for headers in ({}, auth("wrong")):
        r = httpx.put(node_url + "/hicache/storage-backend", json={"nonsense": 1}, headers=headers, timeout=30)
        assert r.status_code == 401
    r = httpx.put(node_url + "/hicache/storage-backend", json={"nonsense": 1}, headers=auth(), timeout=30)
    # With the key, a bad body is the documented 400 {success: false, message}, never FastAPI's 422.
    assert r.status_code == 400 and r.json()["success"] is False
    assert "hicache_storage_backend" in r.json()["message"]


def test_sglang_older_routes(node_url: str, tmp_path: Path) -> None:
    """SGLang 0.5's earlier admin routes reach the same handlers, behind the same key."""
    assert httpx.get(node_url + "/hicache_storage_backend", timeout=30).status_code == 401
    r = httpx.post(node_url + "/attach_hicache_storage_backend", headers=auth(), timeout=60,
                   json=dyn(tmp_path / "old-route"))
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    view = httpx.get(node_url + "/hicache_storage_backend", headers=auth(), timeout=30).json()
    assert view["hicache_storage_backend"] == "dynamic"
    r = httpx.post(node_url + "/detach_hicache_storage_backend", headers=auth(), timeout=60)
    assert r.status_code == 200 and r.json()["success"] is True
    assert httpx.get(node_url + "/hicache/storage-backend", headers=auth(), timeout=30).json()["hicache_storage_backend"] is None
