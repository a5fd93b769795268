"""The admin surface under attack (issue 16, security): auth on every way to reach a route,
secrets never leaving the process, the dynamic loader's default, request limits, key sources
and the bind rule. In-process app (Starlette's TestClient), a real node, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _node_helpers import dir_store, small_node
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hicache_core.controller.shown_config import shown_config, strip_userinfo
from hicache_core.node.admin_key import ADMIN_KEY_ENV, check_bind, resolve_admin_key
from hicache_core.node.app import RequestLimits, create_app
from hicache_core.node.node import Node
from hicache_core.plugins.dynamic import DYNAMIC_ALLOWLIST_ENV

KEY = "k-16-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRETS = {
    "token": "SECRET-token-1", "session_token": "SECRET-session-2", "aws_session_token": "SECRET-aws-3",
    "private_key": "SECRET-pk-4", "accessKey": "SECRET-ak-5", "pwd": "SECRET-pwd-6",
    "backend_params": {"secret_key": "SECRET-nixl-7", "bucket": "b"},
    "dsn": "postgres://admin:SECRET-dsn-8@db:5432/x",
}


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, "_node_backends")
    n = small_node()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def client(node: Node) -> Iterator[TestClient]:
    with TestClient(create_app(node, KEY, close_node=False)) as c:
        yield c


def _attach_body(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"hicache_storage_backend": "dynamic",
            "hicache_storage_backend_extra_config_json": json.dumps({**dir_store(tmp_path / "l3"), **extra})}


# ---------------------------------------------------------------------------- auth on every path
def test_auth_holds_under_a_root_path_mount(node: Node, tmp_path: Path) -> None:
    """Mounted under a prefix (a proxy's root_path), the middleware's path match missed: 200 with no key."""
    outer = FastAPI()
    outer.mount("/engine", create_app(node, KEY, close_node=False))
    with TestClient(outer) as c:
        r = c.put("/engine/hicache/storage-backend", json=_attach_body(tmp_path))
        assert r.status_code == 401
        assert not node.ranks[0].controller.attached
        assert c.put("/engine/hicache/storage-backend", json=_attach_body(tmp_path), headers=AUTH).status_code == 200
    with TestClient(create_app(node, KEY, close_node=False), root_path="/proxy") as c:
        assert c.delete("/proxy/hicache/storage-backend").status_code == 401
        assert node.ranks[0].controller.attached


@pytest.mark.parametrize("path", [
    "/hicache/storage-backend/", "/hicache/storage%2Dbackend", "/hicache%2Fstorage-backend",
    "/HICACHE/storage-backend", "/hicache/Storage-Backend", "//hicache/storage-backend",
    "/attach_hicache_storage_backend", "/attach_hicache_storage_backend/",
])
def test_no_variant_of_an_admin_path_attaches_without_the_key(
    client: TestClient, node: Node, tmp_path: Path, path: str,
) -> None:
    for method in ("PUT", "POST"):
        r = client.request(method, path, json=_attach_body(tmp_path), follow_redirects=True)
        assert r.status_code in (401, 404, 405), (method, path, r.status_code)
    assert not node.ranks[0].controller.attached


@pytest.mark.parametrize("body", ["{not json", "", "[1, 2]", '"a string"', '{"hicache_storage_backend": 5}'])
def test_every_admin_error_is_400_success_false(client: TestClient, body: str) -> None:
    r = client.put("/hicache/storage-backend", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    data = r.json()
    assert data["success"] is False and data["message"]


# ---------------------------------------------------------------------------- secrets
def test_secrets_never_leave_the_process(client: TestClient, node: Node, tmp_path: Path) -> None:
    r = client.put("/hicache/storage-backend", json=_attach_body(tmp_path, **SECRETS), headers=AUTH)
    assert r.status_code == 200, r.text
    views = [
        client.get("/hicache/status").text,
        client.get("/hicache/storage-backend", headers=AUTH).text,
        client.get("/metrics").text,
    ]
    for text in views:
        assert "SECRET" not in text
    status = client.get("/hicache/status").json()
    shown = status["ranks"][0]["storage"]["extra_config"]
    assert shown["path"] == str(tmp_path / "l3")  # declared public by the backend: shown
    assert all(shown[k] == "***" for k in SECRETS)  # everything else: hidden, not guessed


def test_url_userinfo_is_stripped_from_shown_values() -> None:
    assert strip_userinfo("http://u:p@host:1/x and etcd://root:pw@h") == "http://host:1/x and etcd://h"
    shown = shown_config({"master_server_address": "tcp://a:b@10.0.0.1:50051", "other": "x"},
                         {"master_server_address"})
    assert shown == {"master_server_address": "tcp://10.0.0.1:50051", "other": "***"}


# ---------------------------------------------------------------------------- dynamic loader default
def test_dynamic_default_never_imports_an_arbitrary_module(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DYNAMIC_ALLOWLIST_ENV, raising=False)
    sys.modules.pop("this", None)
    with TestClient(create_app(node, KEY, close_node=False)) as c:
        body = {"hicache_storage_backend": "dynamic", "hicache_storage_backend_extra_config_json": json.dumps(
            {"backend_name": "zen", "module_path": "this", "class_name": "X"})}
        r = c.put("/hicache/storage-backend", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["success"] is False
    assert DYNAMIC_ALLOWLIST_ENV in r.json()["message"]
    assert "this" not in sys.modules  # its import-time code never ran


def test_dynamic_allowlist_star_is_sglangs_behaviour(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, "*")
    with TestClient(create_app(node, KEY, close_node=False)) as c:
        assert c.put("/hicache/storage-backend", json=_attach_body(tmp_path), headers=AUTH).status_code == 200


# ---------------------------------------------------------------------------- /generate limits
def test_generate_refuses_oversized_requests_fast(node: Node) -> None:
    with TestClient(create_app(node, KEY, close_node=False, limits=RequestLimits(max_request_tokens=65536))) as c:
        t0 = time.perf_counter()
        r = c.post("/generate", json={"hash_ids": list(range(200_000)), "input_length": 1000})
        assert r.status_code == 400 and "--max-request-tokens" in r.json()["error"]["message"]
        assert time.perf_counter() - t0 < 5.0  # it stalled a rank for 34 s
        r = c.post("/generate", json={"hash_ids": [1, 2], "input_length": 10**17})
        assert r.status_code == 400 and "input_length" in r.json()["error"]["message"]
        assert c.post("/generate", content="{oops", headers={"Content-Type": "application/json"}).status_code == 400
        assert c.post("/generate", json={"hash_ids": [1, 2], "input_length": 1000}).status_code == 200
    assert node.totals()["input_tokens"] == 1000  # the refused ones distorted no total


# ---------------------------------------------------------------------------- key sources, bind
def test_admin_key_from_file_or_env(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("from-file\n")
    assert resolve_admin_key("flag", str(f), {ADMIN_KEY_ENV: "env"}) == "flag"
    assert resolve_admin_key(None, str(f), {ADMIN_KEY_ENV: "env"}) == "from-file"
    assert resolve_admin_key(None, None, {ADMIN_KEY_ENV: "env"}) == "env"
    assert resolve_admin_key(None, None, {}) is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        resolve_admin_key(None, str(tmp_path / "empty"), {})


def test_bind_beyond_loopback_warns_and_refuses_without_a_key() -> None:
    assert check_bind("127.0.0.1", None) is None and check_bind("::1", None) is None
    with pytest.raises(ValueError, match=r"refusing to bind 0\.0\.0\.0"):
        check_bind("0.0.0.0", None)
    assert "WARNING" in (check_bind("0.0.0.0", "k") or "")


def test_serve_refuses_0000_without_a_key() -> None:
    out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "serve", "--host", "0.0.0.0",
                          "--port", "1"], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 2
    assert "refusing to bind 0.0.0.0" in out.stderr
