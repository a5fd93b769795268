"""Running a node under uvicorn, and starting one as a child process (tests, demo)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hicache_core.node.app import RequestLimits
from hicache_core.node.node import Node
from hicache_core.testing.processes import LOOPBACK, ServiceProcess, free_port, http_ready

__all__ = ["NodeProcess", "free_port", "serve"]


def serve(node: Node, host: str, port: int, admin_api_key: str | None, log_level: str = "warning",
          limits: RequestLimits | None = None) -> None:
    """Serve ``node`` until interrupted; the node is closed at shutdown."""
    import uvicorn

    from hicache_core.node.app import create_app

    uvicorn.run(create_app(node, admin_api_key, limits=limits), host=host, port=port, log_level=log_level)


class NodeProcess(ServiceProcess):
    """``hicache serve`` in a child process on 127.0.0.1; stopped by PID."""

    def __init__(self, args: Sequence[str], port: int | None = None, log_path: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        url = f"http://{LOOPBACK}:{self.port}"
        self.args = [sys.executable, "-m", "hicache_core.cli.main", "serve", "--host", LOOPBACK,
                     "--port", str(self.port), *args]
        super().__init__(self.args, name="node", url=url, ready=http_ready(url + "/health"), log_path=log_path,
                         env={**os.environ, **(env or {})})

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        super().start(timeout_s)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        return super().stop(sig, timeout_s)

    def __enter__(self) -> NodeProcess:
        return self.start()
