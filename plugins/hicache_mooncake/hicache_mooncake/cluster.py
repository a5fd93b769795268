"""A throw-away Mooncake cluster on 127.0.0.1, for tests and benchmarks.

Three processes, each on free loopback ports so parallel runs never collide:

- ``mooncake_http_metadata_server`` (the transfer engine's metadata; a separate process
  because the master's built-in one binds every interface whatever its host flag says, and
  so that it outlives a master restart like a real deployment's etcd would);
- ``mooncake_master`` (object metadata, allocation, eviction, leases);
- ``mooncake_client`` storage nodes: processes that contribute memory to the pool, so pages
  written by a backend that contributes none cross a real TCP connection.

Every process is started with its own session, waited for until healthy, and stopped by PID
(SIGTERM, then SIGKILL) in ``stop()``; ``with LocalMooncakeCluster(...) as c:`` does both.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from hicache_core.testing.processes import LOOPBACK, ServiceError, ServiceProcess, free_port, http_ready

__all__ = ["CLIENT_ENV", "ClusterError", "LOOPBACK", "LocalMooncakeCluster", "find_tool", "free_port"]

#: Environment every Mooncake process and client of a local cluster runs with.
CLIENT_ENV: dict[str, str] = {
    "MC_TCP_BIND_ADDRESS": LOOPBACK,
    "MC_STORE_CLIENT_SETUP_RETRIES": "1",
    "MC_LOG_LEVEL": "ERROR",
}


class ClusterError(ServiceError):
    """A local Mooncake process did not start or become healthy; the message has its log tail."""


def find_tool(name: str) -> str:
    """Path of a Mooncake console script, next to this Python first, then on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(
            f"{name} not found next to {sys.executable} or on PATH; "
            "pip install mooncake-transfer-engine-non-cuda"
        )
    return found


@dataclass
class LocalMooncakeCluster:
    """Metadata server + master + ``storage_nodes`` storage nodes on 127.0.0.1.

    ``segment_size`` is each storage node's contribution (Mooncake size syntax, "512MB");
    ``lease_ttl_ms`` the master's read lease (2 s: longer than any test transfer on a loaded
    machine, which would otherwise fail with lease_expired, short enough to delete what was read);
    ``client_ttl_s`` how long the master keeps a silent node's memory mounted.
    """

    storage_nodes: int = 1
    segment_size: str = "512MB"
    lease_ttl_ms: int = 2000
    eviction_high_watermark: float = 0.95
    client_ttl_s: int = 3
    workdir: Path | None = None
    start_timeout_s: float = 30.0
    rpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    metadata_port: int = field(default_factory=free_port)
    _procs: dict[str, ServiceProcess] = field(default_factory=dict, repr=False)
    _own_workdir: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ addresses
    @property
    def master_address(self) -> str:
        return f"{LOOPBACK}:{self.rpc_port}"

    @property
    def metadata_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metadata_port}/metadata"

    @property
    def health_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/health"

    def extra_config(self, global_segment_size: int | str = 0, local_buffer_size: int | str = "64mb") -> dict[str, Any]:
        """The backend extra config for a client of this cluster (contributing no memory)."""
        return {
            "master_server_address": self.master_address,
            "metadata_server": self.metadata_url,
            "local_hostname": LOOPBACK,
            "protocol": "tcp",
            "device_name": "",
            "global_segment_size": global_segment_size,
            "local_buffer_size": local_buffer_size,
        }

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items() if p.pid is not None and p.alive()}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalMooncakeCluster:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start every process and wait until each is healthy; on failure stop what started."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="hicache-mooncake-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key, value in CLIENT_ENV.items():
            os.environ.setdefault(key, value)  # this process's clients, before Mooncake loads
        try:
            self.start_metadata_server()
            self.start_master()
            for i in range(self.storage_nodes):
                self.start_storage_node(i)
        except BaseException:
            self.stop()
            raise

    def start_metadata_server(self) -> None:
        self._spawn("metadata", [
            find_tool("mooncake_http_metadata_server"), "--host", LOOPBACK,
            "--port", str(self.metadata_port), "--log-level", "ERROR",
        ])
        self._wait(http_ready(f"http://{LOOPBACK}:{self.metadata_port}/metadata?key=probe", need_ok=False),
                   "metadata", "its HTTP port to answer")

    def start_master(self) -> None:
        """Start (or restart, on the same ports) the master; its objects start empty."""
        self._spawn("master", [
            find_tool("mooncake_master"),
            f"--rpc_address={LOOPBACK}", f"--rpc_port={self.rpc_port}",
            "--enable_http_metadata_server=false",
            f"--metrics_host={LOOPBACK}", f"--metrics_port={self.metrics_port}",
            f"--default_kv_lease_ttl={self.lease_ttl_ms}",
            f"--eviction_high_watermark_ratio={self.eviction_high_watermark}",
            f"--client_ttl={self.client_ttl_s}",
        ])
        self._wait(http_ready(self.health_url), "master", f"{self.health_url} to answer")

    def start_storage_node(self, index: int = 0) -> None:
        """Start storage node ``index`` and wait until the master counts its memory."""
        before = self.total_capacity()
        name = f"storage{index}"
        self._spawn(name, [
            find_tool("mooncake_client"),
            f"--host={LOOPBACK}", f"--port={free_port()}",
            f"--master_server_address={self.master_address}",
            f"--metadata_server={self.metadata_url}",
            f"--global_segment_size={self.segment_size}",
            "--protocol=tcp",
        ])
        self._wait(lambda: self.total_capacity() > before, name, "the master to mount its memory")

    def wait_storage_mounted(self, timeout_s: float = 20.0) -> None:
        """Wait until the master counts memory from live storage nodes (after a master restart)."""
        self._wait(lambda: self.total_capacity() > 0, "master", "a storage node to (re)mount its memory", timeout_s)

    def stop(self) -> None:
        """Stop every process by PID: SIGTERM, then SIGKILL after 5 s. Safe to call twice.

        Idle clients this process kept for the cluster (``client_pool``) are closed first,
        while it still answers.
        """
        from hicache_mooncake.client_pool import client_pool

        client_pool().close_idle(self.master_address)
        for name in reversed(list(self._procs)):
            self.stop_process(name)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            proc.stop(sig, timeout_s=5)

    def kill(self, name: str) -> None:
        """``kill -9`` one process ("master", "metadata", "storage0", ...) and reap it."""
        self.stop_process(name, signal.SIGKILL)

    # ------------------------------------------------------------------ probes
    def total_capacity(self) -> int:
        """``master_total_capacity_bytes`` from the master's metrics; 0 when unknown."""
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=1) as r:
                text = r.read().decode(errors="replace")
        except (OSError, urllib.error.URLError):
            return 0
        for line in text.splitlines():
            if line.startswith("master_total_capacity_bytes "):
                try:
                    return int(float(line.split()[1]))
                except ValueError:
                    return 0
        return 0

    # ------------------------------------------------------------------ plumbing
    def _spawn(self, name: str, argv: list[str]) -> None:
        old = self._procs.get(name)
        if old is not None and old.alive():
            raise ClusterError(f"{name} is already running (pid {old.pid})")
        assert self.workdir is not None
        proc = ServiceProcess(argv, name=name, log_path=self.workdir / f"{name}.log", env={**os.environ, **CLIENT_ENV},
                              cwd=self.workdir, new_session=True)
        self._procs[name] = proc.spawn()

    def _wait(self, ready: Callable[[], bool], name: str, what: str, timeout_s: float | None = None) -> None:
        try:
            self._procs[name].wait_for(ready, what, timeout_s or self.start_timeout_s)
        except ServiceError as exc:
            raise ClusterError(str(exc)) from None
