"""The backend's configuration: extra-config keys, then environment variables, then defaults.

Every key is documented once, in ``OPTIONS``; ``plugin.py`` turns that table into the
``ConfigOption`` list ``hicache backends`` shows, and the README repeats it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hicache_core.config_values import parse_bool, parse_size
from hicache_core.spec.errors import BackendConfigError

#: What ``plugin`` accepts; ``3FS`` is NIXL's ``HF3FS`` plugin.
PLUGIN_CHOICES = ("auto", "3FS", "POSIX", "GDS_MT", "GDS", "OBJ")
#: The order ``auto`` tries. OBJ comes last and only when a bucket is configured.
AUTO_ORDER = ("3FS", "POSIX", "GDS_MT", "GDS", "OBJ")
#: hicache's name for a plugin -> the name NIXL gives it.
NIXL_PLUGIN_NAMES = {"3FS": "HF3FS", "POSIX": "POSIX", "GDS_MT": "GDS_MT", "GDS": "GDS", "OBJ": "OBJ"}
POSIX_ENGINES = ("default", "aio", "uring", "posix_aio")
O_DIRECT_CHOICES = ("false", "true", "auto")


@dataclass(frozen=True)
class Option:
    """One configuration key: its environment variable(s), default and meaning."""

    name: str
    envs: tuple[str, ...]
    default: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("plugin", ("HICACHE_NIXL_PLUGIN",), "auto",
           "NIXL storage plugin: auto (3FS > POSIX > GDS_MT > GDS, then OBJ), 3FS, POSIX, GDS_MT, GDS or OBJ"),
    Option("storage_dir", ("HICACHE_NIXL_STORAGE_DIR",), "/tmp/hicache_nixl",
           "directory of the page files (3FS, POSIX, GDS_MT, GDS); one file per page, sharded in subfolders"),
    Option("max_bytes", ("HICACHE_NIXL_MAX_BYTES",), 0,
           "size bound of the page files in bytes ('64GiB' accepted; 0 = unbounded); least recently used pages are evicted"),
    Option("o_direct", ("HICACHE_NIXL_O_DIRECT",), "false",
           "open page files with O_DIRECT: false, true (error when the pool's pages are not 4 KiB aligned) or auto"),
    Option("fsync", ("HICACHE_NIXL_FSYNC",), False, "fsync each page file before it becomes visible"),
    Option("posix_engine", ("HICACHE_NIXL_POSIX_ENGINE",), "default",
           "POSIX plugin I/O engine: default (NIXL's choice, Linux AIO), aio, uring or posix_aio"),
    Option("transfer_timeout_s", ("HICACHE_NIXL_TRANSFER_TIMEOUT_S",), 30.0,
           "seconds a batch transfer may take before its pages count as failed"),
    Option("bucket", ("HICACHE_NIXL_BUCKET", "AWS_DEFAULT_BUCKET"), None, "OBJ: the S3 bucket that holds one object per page"),
    Option("endpoint", ("HICACHE_NIXL_ENDPOINT", "AWS_ENDPOINT_OVERRIDE"), None,
           "OBJ: S3 endpoint URL, e.g. http://127.0.0.1:9000 (default: AWS)"),
    Option("access_key", ("HICACHE_NIXL_ACCESS_KEY", "AWS_ACCESS_KEY_ID"), None, "OBJ: access key id"),
    Option("secret_key", ("HICACHE_NIXL_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"), None, "OBJ: secret access key"),
    Option("region", ("HICACHE_NIXL_REGION", "AWS_REGION"), "us-east-1", "OBJ: S3 region"),
    Option("object_prefix", ("HICACHE_NIXL_OBJECT_PREFIX",), "", "OBJ: prefix put before every object name"),
    Option("max_attempts", ("HICACHE_NIXL_MAX_ATTEMPTS",), None,
           "OBJ: S3 request attempts; sets AWS_MAX_ATTEMPTS (and AWS_RETRY_MODE=standard) for the AWS SDK, which "
           "reads them once per process when the first OBJ backend starts (the SDK default retries ~25 s)"),
    Option("staging_pages", ("HICACHE_NIXL_STAGING_PAGES",), 16,
           "OBJ: pages gathered at a time when a page is several pieces in host memory (objects are written whole)"),
    Option("backend_params", (), None, "extra NIXL backend parameters (a dict of strings) passed to create_backend"),
)
OPTION_NAMES = frozenset(o.name for o in OPTIONS)

def parse_bytes(name: str, value: Any) -> int:
    """``'64GiB'``, ``'512m'``, ``1024`` -> bytes; a clear error naming the key otherwise."""
    try:
        return parse_size(value)
    except ValueError:
        raise BackendConfigError(f"nixl: {name} must be a size such as 1073741824 or '64GiB', got {value!r}") from None


def _parse_bool(name: str, value: Any) -> bool:
    try:
        return parse_bool(value, empty=False)
    except ValueError:
        raise BackendConfigError(f"nixl: {name} must be true or false, got {value!r}") from None


def _parse_choice(name: str, value: Any, choices: tuple[str, ...], case_insensitive: bool = True) -> str:
    text = str(value).strip()
    for choice in choices:
        if text == choice or (case_insensitive and text.lower() == choice.lower()):
            return choice
    raise BackendConfigError(f"nixl: {name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class NixlSettings:
    """Resolved configuration of one ``nixl`` backend."""

    plugin: str = "auto"
    storage_dir: str = "/tmp/hicache_nixl"
    max_bytes: int = 0
    o_direct: str = "false"
    fsync: bool = False
    posix_engine: str = "default"
    transfer_timeout_s: float = 30.0
    bucket: str | None = None
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    object_prefix: str = ""
    max_attempts: int | None = None
    staging_pages: int = 16
    backend_params: dict[str, str] = field(default_factory=dict)
    #: Where each value came from ("extra_config", an env var name, or "default").
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(cls, extra: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> NixlSettings:
        """Settings from extra-config, then the environment, then defaults; bad values raise
        ``BackendConfigError`` naming the key."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for opt in OPTIONS:
            if extra.get(opt.name) is not None:
                raw[opt.name], sources[opt.name] = extra[opt.name], "extra_config"
                continue
            for var in opt.envs:
                if env.get(var):
                    raw[opt.name], sources[opt.name] = env[var], var
                    break
            else:
                raw[opt.name], sources[opt.name] = opt.default, "default"
        try:
            timeout = float(raw["transfer_timeout_s"])
        except (TypeError, ValueError):
            raise BackendConfigError(
                f"nixl: transfer_timeout_s must be a number of seconds, got {raw['transfer_timeout_s']!r}"
            ) from None
        if not timeout > 0:
            raise BackendConfigError(f"nixl: transfer_timeout_s must be > 0, got {timeout}")
        staging = _positive_int("staging_pages", raw["staging_pages"])
        attempts = None if raw["max_attempts"] is None else _positive_int("max_attempts", raw["max_attempts"])
        params = raw["backend_params"] or {}
        if not isinstance(params, Mapping):
            raise BackendConfigError(
                f"nixl: backend_params must be a mapping of NIXL backend parameters, got {type(params).__name__}"
            )
        endpoint = raw["endpoint"]
        if endpoint is not None and "://" not in str(endpoint):
            raise BackendConfigError(
                f"nixl: endpoint must be a URL with a scheme, e.g. http://127.0.0.1:9000, got {endpoint!r}"
            )
        return cls(
            plugin=_parse_choice("plugin", raw["plugin"], PLUGIN_CHOICES),
            storage_dir=str(raw["storage_dir"]),
            max_bytes=parse_bytes("max_bytes", raw["max_bytes"]),
            o_direct=_parse_choice("o_direct", str(raw["o_direct"]).lower(), O_DIRECT_CHOICES),
            fsync=_parse_bool("fsync", raw["fsync"]),
            posix_engine=_parse_choice("posix_engine", raw["posix_engine"], POSIX_ENGINES),
            transfer_timeout_s=timeout,
            bucket=None if raw["bucket"] is None else str(raw["bucket"]),
            endpoint=None if endpoint is None else str(endpoint),
            access_key=None if raw["access_key"] is None else str(raw["access_key"]),
            secret_key=None if raw["secret_key"] is None else str(raw["secret_key"]),
            region=str(raw["region"]),
            object_prefix=str(raw["object_prefix"] or ""),
            max_attempts=attempts,
            staging_pages=staging,
            backend_params={str(k): str(v) for k, v in params.items()},
            sources=sources,
        )

    def posix_params(self) -> dict[str, str]:
        """NIXL POSIX backend parameters for the configured engine."""
        params = {
            "aio": {"use_aio": "true"},
            "uring": {"use_uring": "true"},
            "posix_aio": {"use_posix_aio": "true"},
        }.get(self.posix_engine, {})
        return {**params, **self.backend_params}

    def obj_params(self) -> dict[str, str]:
        """NIXL OBJ backend parameters (credentials included; never logged)."""
        params: dict[str, str] = {"region": self.region, "use_virtual_addressing": "false"}
        if self.bucket:
            params["bucket"] = self.bucket
        if self.endpoint:
            scheme, _, _ = self.endpoint.partition("://")
            params["endpoint_override"] = self.endpoint
            params["scheme"] = scheme
        if self.access_key:
            params["access_key"] = self.access_key
        if self.secret_key:
            params["secret_key"] = self.secret_key
        return {**params, **self.backend_params}


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BackendConfigError(f"nixl: {name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise BackendConfigError(f"nixl: {name} must be a positive integer, got {value!r}")
    return number
