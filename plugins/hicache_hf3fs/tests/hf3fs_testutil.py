"""Helpers shared by the hf3fs tests: a real metadata-service process on 127.0.0.1."""

from __future__ import annotations

import sys

from hicache_core.testing.processes import ServiceProcess, free_port, http_ready

__all__ = ["ServiceProcess", "free_port", "start_metadata_service"]


def start_metadata_service(state_file: str | None = None, timeout: float = 30.0) -> ServiceProcess:
    """Start ``python -m hicache_hf3fs.metadata_server`` on a free port; wait until healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "hicache_hf3fs.metadata_server", "--host", "127.0.0.1", "--port", str(port)]
    if state_file:
        cmd += ["--state-file", state_file]
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess(cmd, name="metadata service", url=url, ready=http_ready(url + "/health"))
    return service.start(timeout)
