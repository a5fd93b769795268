"""Fixtures of hicache-nixl's tests: a real S3 server (moto) on 127.0.0.1, page directories.

The S3 server is started once per test session on a free port, checked for health, and
stopped by PID at teardown, so a plain ``pytest`` works on a clean machine once the test
packages are installed (``pip install 'moto[server]' boto3``).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nixl_helpers import S3Server

from hicache_core.testing.processes import ServiceError, ServiceProcess, free_port, http_ready

# The AWS SDK inside NIXL's OBJ plugin reads its retry mode and budget once per process, when the
# first OBJ backend starts; without a bound a request to a dead endpoint retries for ~25 s.
os.environ.setdefault("AWS_RETRY_MODE", "standard")
os.environ.setdefault("AWS_MAX_ATTEMPTS", "2")

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process, bound to 127.0.0.1 on a free port."""
    pytest.importorskip("moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'")
    pytest.importorskip("boto3", reason="boto3 is not installed: pip install boto3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ServiceProcess(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        name="moto server", url=endpoint, ready=http_ready(f"{endpoint}/moto-api/"),
        log_path=tmp_path_factory.mktemp("moto") / "moto.log",
    )
    try:
        server.start(timeout_s=30)
    except ServiceError as exc:
        pytest.fail(str(exc))
    try:
        yield S3Server(endpoint, server.pid or 0)
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket per test (bucket names: lower case, 3-63 characters)."""
    name = f"hicache-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm), removed afterwards."""
    root = Path("/dev/shm")
    if not (root.is_dir() and os.access(root, os.W_OK)):
        pytest.skip("/dev/shm is not a writable tmpfs on this machine")
    path = root / f"hicache-nixl-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
