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
#: Storage schemes: how pages lie in the directory (see hicache_file.store).
SCHEMES = ("pagefile", "sglang", "segment")
DEFAULT_SCHEME = "pagefile"
#: Host-pool layouts an operator may declare for pages SGLang wrote without a manifest.
SGLANG_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")

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
    scheme: str = DEFAULT_SCHEME
    #: The layout and dtype of the SGLang server that wrote an unmarked folder (scheme sglang).
    sglang_layout: str | None = None
    sglang_dtype: str | None = None

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
        io_threads = read_int(extra, "io_threads", DEFAULT_IO_THREADS, minimum=1)
        scheme = scheme_of(extra)
        layout = _choice(extra, "sglang_layout", SGLANG_LAYOUTS)
        dtype = extra.get("sglang_dtype")
        if dtype is not None and not _is_dtype(str(dtype)):
            raise BackendConfigError(
                f"file backend: 'sglang_dtype' must name a torch dtype (bfloat16, float16, "
                f"float8_e4m3fn, ...), got {dtype!r}"
            )
        return cls(
            path=os.path.abspath(os.fspath(path)),
            max_bytes=read_size(extra, "max_bytes"),
            max_pages=read_int(extra, "max_pages", None, minimum=1),
            fsync=read_bool(extra, "fsync", False),
            io_threads=min(int(io_threads or 1), 64),
            checksum=checksum,
            remove_corrupt=read_bool(extra, "remove_corrupt", True),
            scheme=scheme,
            sglang_layout=layout,
            sglang_dtype=None if dtype is None else str(dtype).removeprefix("torch."),
        )


def scheme_of(extra: Mapping[str, Any]) -> str:
    """The ``scheme`` extra-config key, checked: ``pagefile`` (default), ``sglang`` or ``segment``."""
    return _choice(extra, "scheme", SCHEMES) or DEFAULT_SCHEME


def _choice(extra: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
    value = extra.get(key)
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text not in choices:
        raise BackendConfigError(f"file backend: '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return text


def _is_dtype(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name.removeprefix("torch."), None), torch.dtype)


def read_bool(extra: Mapping[str, Any], key: str, default: bool, who: str = "file backend") -> bool:
    """``extra[key]`` as a bool (``default`` when absent); a bad value names the key."""
    value = extra.get(key)
    if value is None:
        return default
    try:
        return parse_bool(value)
    except ValueError:
        raise BackendConfigError(f"{who}: '{key}' must be true or false, got {value!r}") from None


def read_int(extra: Mapping[str, Any], key: str, default: int | None, minimum: int,
             who: str = "file backend") -> int | None:
    """``extra[key]`` as an int of at least ``minimum`` (``default`` when absent or empty)."""
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BackendConfigError(f"{who}: '{key}' must be an integer, got {value!r}") from None
    if number < minimum:
        raise BackendConfigError(f"{who}: '{key}' must be at least {minimum}, got {number}")
    return number


def read_size(extra: Mapping[str, Any], key: str, default: int | None = None,
              who: str = "file backend") -> int | None:
    """``extra[key]`` as a positive byte count (``"64GiB"`` accepted; ``default`` when absent)."""
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise BackendConfigError(f"{who}: '{key}': {exc}") from None
    if size <= 0:
        raise BackendConfigError(f"{who}: '{key}' must be positive, got {value!r}")
    return size
