"""Helpers shared by the hf3fs tests: a real metadata-service process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the service by its PID; returns its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return int(self.proc.returncode)


def start_metadata_service(state_file: str | None = None, timeout: float = 30.0) -> ServiceProcess:
    """Start ``python -m hicache_hf3fs.metadata_server`` on a free port; wait until healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "hicache_hf3fs.metadata_server", "--host", "127.0.0.1", "--port", str(port)]
    if state_file:
        cmd += ["--state-file", state_file]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess(proc, url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"metadata service exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    service.stop(signal.SIGKILL)
    raise RuntimeError(f"metadata service on {url} did not become healthy in {timeout}s")
