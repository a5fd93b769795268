"""Mooncake client settings, read the way SGLang reads them, and validated.

Sources, later ones winning key by key:

1. SGLang's defaults (``DEFAULTS``);
2. the ``MOONCAKE_*`` environment variables (``ENV_VARS``);
3. the JSON file named by ``MOONCAKE_CONFIG_PATH`` (or by the extra-config key
   ``config_path``), with the same keys as the extra config;
4. the backend's extra config (``--hicache-storage-backend-extra-config``).

SGLang picks one whole source (extra config if it names a master, else the file, else the
environment); merging key by key accepts everything SGLang accepts and lets an operator keep
cluster-wide settings in the file and override one key per node.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hicache_core import config_values
from hicache_core.spec.errors import BackendConfigError

CONFIG_PATH_ENV = "MOONCAKE_CONFIG_PATH"

#: extra-config key -> environment variable (SGLang's names).
ENV_VARS: dict[str, str] = {
    "master_server_address": "MOONCAKE_MASTER",
    "metadata_server": "MOONCAKE_TE_META_DATA_SERVER",
    "local_hostname": "MOONCAKE_LOCAL_HOSTNAME",
    "protocol": "MOONCAKE_PROTOCOL",
    "device_name": "MOONCAKE_DEVICE",
    "global_segment_size": "MOONCAKE_GLOBAL_SEGMENT_SIZE",
    "local_buffer_size": "MOONCAKE_LOCAL_BUFFER_SIZE",
}

GiB = 1024**3
MiB = 1024**2

#: SGLang's defaults (python/sglang/srt/mem_cache/storage/mooncake_store).
DEFAULTS: dict[str, Any] = {
    "metadata_server": "P2PHANDSHAKE",
    "local_hostname": "localhost",
    "protocol": "tcp",
    "device_name": "",
    "global_segment_size": 4 * GiB,
    "local_buffer_size": 16 * MiB,
}

KEYS: tuple[str, ...] = tuple(ENV_VARS)

#: Transports Mooncake Store builds know; tcp works everywhere, rdma needs RDMA NICs.
PROTOCOLS: frozenset[str] = frozenset(
    {"tcp", "rdma", "efa", "nvmeof", "nvlink", "nvlink_intra", "cxl", "ascend", "hip", "barex", "ub"}
)

_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.\-:]+\]?:(\d{1,5})$")
_MASTER_SCHEMES = ("etcd://", "redis://", "k8s://")


def parse_size(value: Any, name: str, source: str) -> int:
    """Bytes from an int or a string such as ``"4gb"``, ``"16 MiB"``, ``"1.5g"`` (powers of 1024)."""
    try:
        return config_values.parse_size(value)
    except ValueError:
        raise _bad(name, value, source, "a byte count >= 0: an int, or a string such as '512mb' or '4gb'") from None


def _bad(name: str, value: Any, source: str, expected: str) -> BackendConfigError:
    return BackendConfigError(f"mooncake: {name}={value!r} (from {source}) is invalid: expected {expected}")


@dataclass(frozen=True)
class MooncakeSettings:
    """Validated client settings; ``sources`` says where each value came from."""

    master_server_address: str
    metadata_server: str
    local_hostname: str
    protocol: str
    device_name: str
    global_segment_size: int
    local_buffer_size: int
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        return (
            f"master {self.master_server_address}, metadata {self.metadata_server}, "
            f"host {self.local_hostname}, {self.protocol}"
            + (f" on {self.device_name}" if self.device_name else "")
        )


def _load_file(path: str, via: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise BackendConfigError(f"mooncake: config file {path!r} (named by {via}) does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BackendConfigError(
            f"mooncake: config file {path!r} (named by {via}) is not readable JSON: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise BackendConfigError(f"mooncake: config file {path!r} (named by {via}) must hold a JSON object")
    return data


def load_settings(extra: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> MooncakeSettings:
    """Merge the four sources (module docstring) and validate every field.

    Raises ``BackendConfigError`` naming the bad field, its value and where it came from.
    Keys of the extra config that are not Mooncake's (prefetch knobs, other tools' keys)
    are left alone.
    """
    env = os.environ if environ is None else environ
    extra = dict(extra or {})
    values: dict[str, Any] = dict(DEFAULTS)
    sources: dict[str, str] = {k: "default" for k in DEFAULTS}
    for key, var in ENV_VARS.items():
        if env.get(var, "") != "":
            values[key], sources[key] = env[var], f"env {var}"
    path_key = "config_path" if extra.get("config_path") else None
    path = extra.get("config_path") or env.get(CONFIG_PATH_ENV)
    if path:
        via = "extra-config config_path" if path_key else f"env {CONFIG_PATH_ENV}"
        for key, value in _load_file(str(path), via).items():
            if key in ENV_VARS and value is not None:
                values[key], sources[key] = value, f"config file {path}"
    for key in KEYS:
        if extra.get(key) is not None:
            values[key], sources[key] = extra[key], "extra-config"
    return _validate(values, sources)


def _validate(values: dict[str, Any], sources: dict[str, str]) -> MooncakeSettings:
    master = values.get("master_server_address")
    if not master:
        raise BackendConfigError(
            "mooncake: master_server_address is required (host:port of mooncake_master's RPC "
            "service, e.g. 10.0.0.1:50051); set it in the extra config, in the JSON file named by "
            f"{CONFIG_PATH_ENV}, or in {ENV_VARS['master_server_address']}"
        )
    src = sources["master_server_address"]
    if not isinstance(master, str):
        raise _bad("master_server_address", master, src, "a 'host:port' string")
    master = master.strip()
    if not master.startswith(_MASTER_SCHEMES):
        m = _HOST_PORT.match(master)
        if not m or not 0 < int(m.group(1)) < 65536:
            raise _bad("master_server_address", master, src, "'host:port' with a port 1-65535")
    strings: dict[str, str] = {}
    for key in ("metadata_server", "local_hostname", "protocol", "device_name"):
        value = values[key]
        if not isinstance(value, str):
            raise _bad(key, value, sources[key], "a string")
        strings[key] = value.strip()
    for key in ("metadata_server", "local_hostname"):
        if not strings[key]:
            raise _bad(key, values[key], sources[key], "a non-empty string")
    meta = strings["metadata_server"]
    if meta != "P2PHANDSHAKE" and "://" not in meta and not _HOST_PORT.match(meta):
        raise _bad(
            "metadata_server", meta, sources["metadata_server"],
            "P2PHANDSHAKE, http://host:port/metadata, etcd://host:port or redis://host:port",
        )
    protocol = strings["protocol"].lower()
    if protocol not in PROTOCOLS:
        raise _bad("protocol", values["protocol"], sources["protocol"], f"one of {', '.join(sorted(PROTOCOLS))}")
    gss = parse_size(values["global_segment_size"], "global_segment_size", sources["global_segment_size"])
    lbs = parse_size(values["local_buffer_size"], "local_buffer_size", sources["local_buffer_size"])
    if lbs == 0:
        raise _bad("local_buffer_size", values["local_buffer_size"], sources["local_buffer_size"], "a size > 0")
    return MooncakeSettings(
        master_server_address=master,
        metadata_server=meta,
        local_hostname=strings["local_hostname"],
        protocol=protocol,
        device_name=strings["device_name"],
        global_segment_size=gss,
        local_buffer_size=lbs,
        sources=sources,
    )
