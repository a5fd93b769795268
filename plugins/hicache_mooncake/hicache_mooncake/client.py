"""Opening a ``MooncakeDistributedStore`` client: quickly, and with errors that say where.

Mooncake reads a few environment variables when its library loads or when ``setup`` runs;
``prepare_environment`` gives them hicache's defaults (the caller's values win):

- ``MC_STORE_CLIENT_SETUP_RETRIES=1``: ``setup`` against a dead master gives up in seconds
  instead of retrying for about 90 s;
- ``MC_LOG_LEVEL=ERROR``: the library logs every transfer at INFO otherwise;
- ``MC_TCP_BIND_ADDRESS=127.0.0.1`` when the node names itself by a loopback address, so a
  single-machine setup listens on loopback only.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from hicache_core.spec.errors import BackendLoadError, HiCacheError
from hicache_mooncake.config import MooncakeSettings
from hicache_mooncake.probe import probe

ENV_DEFAULTS: dict[str, str] = {
    "MC_STORE_CLIENT_SETUP_RETRIES": "1",
    "MC_LOG_LEVEL": "ERROR",
}
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class MooncakeConnectError(HiCacheError, ConnectionError):
    """The Mooncake client could not join the cluster (master or metadata server unreachable)."""


def prepare_environment(settings: MooncakeSettings | None = None) -> None:
    """Set Mooncake's environment defaults (see the module docstring) unless already set."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if settings is not None and settings.local_hostname in LOOPBACK_NAMES:
        os.environ.setdefault("MC_TCP_BIND_ADDRESS", "127.0.0.1")


def import_store_class() -> Any:
    """``mooncake.store.MooncakeDistributedStore``, imported after ``prepare_environment``."""
    prepare_environment()
    try:
        from mooncake.store import MooncakeDistributedStore  # type: ignore[import-untyped]
    except ImportError as exc:
        why = probe() or f"importing mooncake.store failed: {exc}"
        raise BackendLoadError(f"mooncake backend cannot run here: {why}") from exc
    return MooncakeDistributedStore


def split_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` address; None for scheme addresses (etcd://...)."""
    if "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def tcp_reachable(address: str, timeout_s: float = 1.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s``, else why not.

    Addresses that are not ``host:port`` (HA masters behind etcd://...) are not checked.
    """
    hp = split_host_port(address)
    if hp is None:
        return None
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def open_client(settings: MooncakeSettings) -> Any:
    """A set-up ``MooncakeDistributedStore``; ``MooncakeConnectError`` names what failed.

    The master is probed with a plain TCP connect first: a dead master is reported in
    milliseconds with the address tried, before Mooncake's own setup (which takes seconds).
    """
    prepare_environment(settings)
    cls = import_store_class()
    why = tcp_reachable(settings.master_server_address, timeout_s=2.0)
    if why:
        raise MooncakeConnectError(
            f"mooncake: cannot reach mooncake_master at {settings.master_server_address} "
            f"(master_server_address from {settings.sources.get('master_server_address', '?')}): {why}; "
            "start the master there or fix the address"
        )
    client = cls()
    started = time.monotonic()
    try:
        rc = client.setup(
            settings.local_hostname,
            settings.metadata_server,
            settings.global_segment_size,
            settings.local_buffer_size,
            settings.protocol,
            settings.device_name,
            settings.master_server_address,
        )
    except Exception as exc:  # a binding-level error (bad types) rather than a return code
        raise MooncakeConnectError(f"mooncake: setup raised {type(exc).__name__}: {exc} ({settings.describe()})") from exc
    if rc != 0:
        try:
            client.close()
        except Exception:
            pass
        raise MooncakeConnectError(
            f"mooncake: client setup failed (returned {rc} after {time.monotonic() - started:.1f} s) "
            f"with {settings.describe()}: check that mooncake_master answers at "
            f"{settings.master_server_address}, that the metadata server {settings.metadata_server} "
            "is up, that local_hostname is an address the other nodes can reach"
            + (", and that the RDMA device exists" if settings.protocol == "rdma" else "")
        )
    return client
