"""The file backend's settings, read from extra-config and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hicache_core.config_values import parse_bool, parse_size
from hicache_core.spec.errors import BackendConfigError

DEFAULT_PATH = "/tmp/hicache"
PATH_ENV = "HICACHE_FILE_PATH"
SGLANG_PATH_ENV = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"
DEFAULT_IO_THREADS = 2
CHECKSUMS = ("xxh3", "crc32")

@dataclass(frozen=True)
class FileStoreSettings:
    """Everything the store needs to know besides the engine's ``HiCacheStorageConfig``."""

    path: str = DEFAULT_PATH
    max_bytes: int | None = None
    max_pages: int | None = None
    fsync: bool = False
    io_threads: int = DEFAULT_IO_THREADS
    checksum: str = "xxh3"
    remove_corrupt: bool = True

    @classmethod
    def from_extra(
        cls, extra: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> FileStoreSettings:
        """Read the settings; a bad value raises ``BackendConfigError`` naming the key.

        The directory comes from, in order: extra-config ``path``, extra-config
        ``file_storage_path`` (SGLang's key), env ``HICACHE_FILE_PATH``, env
        ``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR``, then ``/tmp/hicache``.
        """
        env = os.environ if environ is None else environ
        path = (
            extra.get("path") or extra.get("file_storage_path") or env.get(PATH_ENV)
            or env.get(SGLANG_PATH_ENV) or DEFAULT_PATH
        )
        if not isinstance(path, (str, os.PathLike)):
            raise BackendConfigError(f"file backend: 'path' must be a directory path, got {path!r}")
        checksum = str(extra.get("checksum") or "xxh3").lower()
        if checksum not in CHECKSUMS:
            raise BackendConfigError(
                f"file backend: 'checksum' must be one of {', '.join(CHECKSUMS)}, got {checksum!r}"
            )
        io_threads = _int(extra, "io_threads", DEFAULT_IO_THREADS, minimum=1)
        return cls(
            path=os.path.abspath(os.fspath(path)),
            max_bytes=_size(extra, "max_bytes"),
            max_pages=_int(extra, "max_pages", None, minimum=1),
            fsync=_bool(extra, "fsync", False),
            io_threads=min(int(io_threads or 1), 64),
            checksum=checksum,
            remove_corrupt=_bool(extra, "remove_corrupt", True),
        )


def _bool(extra: Mapping[str, Any], key: str, default: bool) -> bool:
    value = extra.get(key)
    if value is None:
        return default
    try:
        return parse_bool(value)
    except ValueError:
        raise BackendConfigError(f"file backend: '{key}' must be true or false, got {value!r}") from None


def _int(extra: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BackendConfigError(f"file backend: '{key}' must be an integer, got {value!r}") from None
    if number < minimum:
        raise BackendConfigError(f"file backend: '{key}' must be at least {minimum}, got {number}")
    return number


def _size(extra: Mapping[str, Any], key: str) -> int | None:
    value = extra.get(key)
    if value is None or value == "":
        return None
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise BackendConfigError(f"file backend: '{key}': {exc}") from None
    if size <= 0:
        raise BackendConfigError(f"file backend: '{key}' must be positive, got {value!r}")
    return size
