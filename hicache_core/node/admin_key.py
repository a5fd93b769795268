"""Where the admin key comes from, and whether the node may bind where it was asked to.

The key can be given three ways, first found wins: ``--admin-api-key KEY`` (SGLang's flag;
visible in ``ps``), ``--admin-api-key-file PATH`` (first line of the file), or the
environment variable ``HICACHE_ADMIN_API_KEY``. A node bound beyond loopback serves its
admin API to the network: without a key it refuses to start, with one it still warns.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

ADMIN_KEY_ENV = "HICACHE_ADMIN_API_KEY"


def resolve_admin_key(flag: str | None, key_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The admin key from the flag, the file or the environment (see the module docstring)."""
    if flag:
        return flag
    if key_file:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text().strip().splitlines()
        except OSError as exc:
            raise ValueError(f"--admin-api-key-file {path}: cannot read it ({exc.strerror})") from None
        if not text or not text[0].strip():
            raise ValueError(f"--admin-api-key-file {path} is empty; put the key on its first line")
        return text[0].strip()
    env = os.environ if environ is None else environ
    return env.get(ADMIN_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, admin_key: str | None) -> str | None:
    """None for loopback; a warning when beyond loopback with a key; ValueError without one."""
    if is_loopback(host):
        return None
    if not admin_key:
        raise ValueError(
            f"refusing to bind {host}: beyond loopback the admin API (attach, detach, which can load code and "
            f"open files on this machine) would be reachable from the network; give an admin key "
            f"(--admin-api-key-file PATH or ${ADMIN_KEY_ENV}), or bind 127.0.0.1"
        )
    return (
        f"WARNING: binding {host}: the node's HTTP API, /generate, /hicache/status and /metrics unauthenticated, "
        "is reachable from the network; the admin endpoints need the admin key. Put it behind a firewall or a "
        "proxy that only your engines can reach."
    )
