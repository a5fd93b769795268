"""The hf3fs backend's settings: a JSON file (as SGLang deploys 3FS) merged with extra-config.

Precedence, lowest first: built-in defaults, the JSON file named by
``SGLANG_HICACHE_HF3FS_CONFIG_PATH`` (or the ``config_path`` extra-config key), then the
extra-config keys themselves. Every bad value raises ``BackendConfigError`` naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hicache_core.config_values import parse_bool
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError

CONFIG_ENV = "SGLANG_HICACHE_HF3FS_CONFIG_PATH"
CLIENT_KINDS = ("auto", "usrbio", "file")

# Keys the controller reads from extra-config; they are not ours and are ignored here.
_FOREIGN_KEYS = {"prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token"}


@dataclass(frozen=True)
class Hf3fsSettings:
    """Resolved settings of one backend instance."""

    #: Rank files are ``{file_path_prefix}.{rank}.bin`` (MLA: one shared ``.mla.0.bin``).
    file_path_prefix: str = "/data/hicache"
    #: Bytes each rank file is pre-sized to; slots = file_size // page bytes.
    file_size: int = 1 << 40
    #: Parallel I/O jobs (usrbio: one ring pair each; file client: worker threads).
    numjobs: int = 16
    #: Ring entries per usrbio job, which is also the most pages one job moves at once.
    entries: int = 8
    #: usrbio ``io_depth``: 0 = submit all at once, >0 = fixed batches, <0 = at most -n per batch.
    io_depth: int = 0
    #: Seconds to wait for a usrbio batch (and for HTTP metadata calls).
    client_timeout: float = 5.0
    #: URL of the shared metadata service; empty = in-process metadata for one process.
    metadata_server_url: str = ""
    #: ``auto`` (usrbio on a 3FS mount), ``usrbio`` (insist), or ``file`` (plain preadv/pwritev).
    client: str = "auto"
    #: Let ``auto`` fall back to the plain-file client when the path is not on a 3FS mount.
    allow_non_3fs: bool = False
    #: Seconds a page may stay "being written" before its slot is reclaimed (writer died).
    write_lease_seconds: float = 120.0
    #: Where the in-process metadata keeps its index between runs; default: next to the file.
    index_path: str = ""


def _bool(name: str, value: Any) -> bool:
    try:
        return parse_bool(value, empty=False)
    except ValueError:
        raise BackendConfigError(f"hf3fs: {name} must be true or false, got {value!r}") from None


def _number(name: str, value: Any, kind: type, minimum: float | None) -> Any:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = kind(value)
    except (TypeError, ValueError):
        raise BackendConfigError(f"hf3fs: {name} must be a {kind.__name__}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise BackendConfigError(f"hf3fs: {name} must be at least {minimum}, got {value!r}")
    return number


def load_json_config(path: str) -> dict[str, Any]:
    """The keys of SGLang's hf3fs JSON config file at ``path``."""
    try:
        raw = Path(path).read_text()
    except OSError as exc:
        raise BackendConfigError(
            f"hf3fs: cannot read the config file {path!r} (from {CONFIG_ENV} or config_path): {exc}"
        ) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BackendConfigError(f"hf3fs: config file {path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BackendConfigError(f"hf3fs: config file {path!r} must hold a JSON object")
    return data


def resolve_settings(config: HiCacheStorageConfig) -> Hf3fsSettings:
    """Defaults, then the JSON file, then extra-config; validated."""
    extra = config.extra()
    merged: dict[str, Any] = {}
    path = extra.get("config_path") or os.environ.get(CONFIG_ENV)
    if path:
        merged.update(load_json_config(str(path)))
    merged.update({k: v for k, v in extra.items() if k != "config_path"})

    known = {f.name for f in fields(Hf3fsSettings)}
    # SGLang's own switch for its mock client; ours is the plain-file client.
    if _bool("use_mock_hf3fs_client", merged.pop("use_mock_hf3fs_client", False)):
        merged.setdefault("client", "file")
    unknown = sorted(set(merged) - known - _FOREIGN_KEYS)
    if unknown:
        raise BackendConfigError(
            f"hf3fs: unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {k: v for k, v in merged.items() if k in known}
    defaults = Hf3fsSettings()
    out: dict[str, Any] = {}
    out["file_size"] = _number("file_size", values.get("file_size", defaults.file_size), int, 1)
    out["numjobs"] = _number("numjobs", values.get("numjobs", defaults.numjobs), int, 1)
    out["entries"] = _number("entries", values.get("entries", defaults.entries), int, 1)
    out["io_depth"] = _number("io_depth", values.get("io_depth", defaults.io_depth), int, None)
    out["client_timeout"] = _number(
        "client_timeout", values.get("client_timeout", defaults.client_timeout), float, 0.001
    )
    out["write_lease_seconds"] = _number(
        "write_lease_seconds", values.get("write_lease_seconds", defaults.write_lease_seconds), float, 0.001
    )
    out["allow_non_3fs"] = _bool("allow_non_3fs", values.get("allow_non_3fs", defaults.allow_non_3fs))
    prefix = str(values.get("file_path_prefix", defaults.file_path_prefix))
    if not prefix or prefix.endswith(os.sep):
        raise BackendConfigError(
            f"hf3fs: file_path_prefix {prefix!r} must name a file prefix (files are <prefix>.<rank>.bin)"
        )
    out["file_path_prefix"] = prefix
    client = str(values.get("client", defaults.client)).lower()
    if client not in CLIENT_KINDS:
        raise BackendConfigError(f"hf3fs: client must be one of {', '.join(CLIENT_KINDS)}, got {client!r}")
    out["client"] = client
    url = str(values.get("metadata_server_url") or "").rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise BackendConfigError(f"hf3fs: metadata_server_url must start with http:// or https://, got {url!r}")
    out["metadata_server_url"] = url
    out["index_path"] = str(values.get("index_path") or "")
    return Hf3fsSettings(**out)


def rank_file_path(settings: Hf3fsSettings, config: HiCacheStorageConfig) -> str:
    """The rank's pre-sized data file: ``<prefix>.<rank>.bin``; MLA ranks share ``<prefix>.mla.0.bin``.

    SGLang gives MLA rank 0's MHA name; a name of its own keeps an MLA page geometry from ever
    meeting an MHA one in the same file (``hicache check`` runs both against one prefix).
    """
    if config.is_mla_model:
        return f"{settings.file_path_prefix}.mla.0.bin"
    return f"{settings.file_path_prefix}.{config.tp_rank}.bin"
