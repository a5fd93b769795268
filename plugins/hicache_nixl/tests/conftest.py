"""Fixtures of hicache-nixl's tests: a real S3 server (moto) on 127.0.0.1, page directories.

The S3 server is started once per test session on a free port, checked for health, and
stopped by PID at teardown, so a plain ``pytest`` works on a clean machine once the test
packages are installed (``pip install 'moto[server]' boto3``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl")

ACCESS_KEY = "hicache-test"
SECRET_KEY = "hicache-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    pid: int

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def obj_config(self, bucket: str, **extra: Any) -> dict[str, Any]:
        return {"plugin": "OBJ", "bucket": bucket, "endpoint": self.endpoint, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, "region": "us-east-1", "max_attempts": 2, **extra}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process, bound to 127.0.0.1 on a free port."""
    pytest.importorskip("moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'")
    pytest.importorskip("boto3", reason="boto3 is not installed: pip install boto3")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto server on {endpoint} not healthy after 30 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield S3Server(endpoint, proc.pid)
    finally:
        os.kill(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


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
