"""Settings of the segment scheme, read from extra-config (and the file backend's env vars).

Shared keys mean what they mean for the page-file scheme (``path``/``file_storage_path``,
``max_bytes``, ``max_pages``, ``fsync``, ``io_threads``); the rest tune the segment layout.
Keys this module does not know (``scheme``, the page-file scheme's own) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hicache_core.spec.errors import BackendConfigError
from hicache_file.config import DEFAULT_IO_THREADS, read_bool, read_int, read_size

DEFAULT_PATH = "/tmp/hicache"
PATH_ENV = "HICACHE_FILE_PATH"
SGLANG_PATH_ENV = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"
#: A new segment is started once the active one holds this many bytes.
DEFAULT_SEGMENT_BYTES = 64 << 20
#: Pages of one read or write system call (fewer for big pages: see ``chunk_bytes``).
DEFAULT_CHUNK_BYTES = 1 << 20
VERIFY_MODES = ("always", "first")


@dataclass(frozen=True)
class SegmentSettings:
    """Everything the segment store needs besides the engine's ``HiCacheStorageConfig``."""

    path: str = DEFAULT_PATH
    max_bytes: int | None = None
    max_pages: int | None = None
    fsync: bool = False
    #: Threads serving one batch of pages of ``PARALLEL_MIN_PAGE_BYTES`` or more (threads.py). Two
    #: by default, as for the page-file scheme: one thread's page checksums then run while the
    #: other's ``pwritev`` copies into the page cache (xxhash drops the GIL), so a set of big
    #: pages costs about its copy alone; reads from the page cache run side by side.
    io_threads: int = DEFAULT_IO_THREADS
    #: Target size of one segment file; under a size bound it is at most 1/16 of the bound.
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    #: Bytes moved per ``preadv``/``pwritev``: small enough that a page's checksum runs on bytes
    #: still in the CPU cache right after the copy, big enough to keep system calls few.
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: ``first``: a page's checksum is checked the first time this process reads it (pages this
    #: process wrote were checksummed from memory and count as checked); ``always``: on every
    #: read (about 20-40 % slower reads from the page cache). The record header (key, place,
    #: length) is checked on every read either way.
    verify: str = "first"
    #: Segment files kept open per namespace (idle ones beyond are closed).
    max_open_segments: int = 256
    #: Reserve a new segment's blocks up front (``posix_fallocate``): appends then skip the
    #: file system's block allocation (about 30 % faster writes on ext4 here).
    preallocate: bool = True

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> SegmentSettings:
        """Read the settings; a bad value raises ``BackendConfigError`` naming the key.

        The directory comes from, in order: ``path``, ``file_storage_path`` (SGLang's key),
        env ``HICACHE_FILE_PATH``, env ``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR``, then
        ``/tmp/hicache``; the segments live under ``<path>/segments/``.
        """
        env = os.environ if environ is None else environ
        path = (
            extra.get("path") or extra.get("file_storage_path") or env.get(PATH_ENV)
            or env.get(SGLANG_PATH_ENV) or DEFAULT_PATH
        )
        if not isinstance(path, (str, os.PathLike)):
            raise BackendConfigError(f"file backend (segment): 'path' must be a directory path, got {path!r}")
        verify = str(extra.get("verify") or "first").lower()
        if verify not in VERIFY_MODES:
            raise BackendConfigError(
                f"file backend (segment): 'verify' must be one of {', '.join(VERIFY_MODES)}, got {verify!r}"
            )
        return cls(
            path=os.path.abspath(os.fspath(path)),
            max_bytes=_size(extra, "max_bytes", None),
            max_pages=_int(extra, "max_pages", None, minimum=1),
            fsync=_bool(extra, "fsync", False),
            io_threads=min(_int(extra, "io_threads", DEFAULT_IO_THREADS, minimum=1) or 1, 64),
            segment_bytes=_size(extra, "segment_bytes", DEFAULT_SEGMENT_BYTES) or DEFAULT_SEGMENT_BYTES,
            chunk_bytes=_size(extra, "chunk_bytes", DEFAULT_CHUNK_BYTES) or DEFAULT_CHUNK_BYTES,
            verify=verify,
            max_open_segments=_int(extra, "max_open_segments", 256, minimum=4) or 256,
            preallocate=_bool(extra, "preallocate", True),
        )


WHO = "file backend (segment)"


def _bool(extra: Mapping[str, Any], key: str, default: bool) -> bool:
    return read_bool(extra, key, default, WHO)


def _int(extra: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    return read_int(extra, key, default, minimum, WHO)


def _size(extra: Mapping[str, Any], key: str, default: int | None) -> int | None:
    return read_size(extra, key, default, WHO)


def config_model() -> type:
    """The pydantic model of the segment scheme's extra-config keys (the controller refuses
    unknown keys and wrong types at attach with it). Built on first use: pydantic is not
    imported by this module."""
    global _MODEL
    if _MODEL is None:
        from pydantic import BaseModel, ConfigDict, Field
        from pydantic.config import JsonDict

        public: JsonDict = {"public": True}

        class SegmentConfig(BaseModel):
            """The file backend's ``segment`` scheme."""

            model_config = ConfigDict(extra="forbid")

            path: str | None = Field(None, description="directory (absolute); segments under <path>/segments/",
                                     json_schema_extra=public)
            file_storage_path: str | None = Field(None, description="SGLang's name of 'path'", json_schema_extra=public)
            scheme: str | None = Field(None, pattern="^segment$", description="'segment'", json_schema_extra=public)
            max_bytes: int | str | None = Field(None, description="size bound per namespace ('64GiB' accepted)",
                                                json_schema_extra=public)
            max_pages: int | None = Field(None, ge=1, description="page-count bound per namespace",
                                          json_schema_extra=public)
            fsync: bool | int | str | None = Field(None, description="flush pages and journal before a set returns",
                                                   json_schema_extra=public)
            io_threads: int | None = Field(None, ge=1, le=64, description="threads per batch (pages >= 256 KiB; default 2)",
                                           json_schema_extra=public)
            segment_bytes: int | str | None = Field(None, description="target segment file size (default 64MiB)",
                                                    json_schema_extra=public)
            chunk_bytes: int | str | None = Field(None, description="bytes per preadv/pwritev (default 1MiB)",
                                                  json_schema_extra=public)
            verify: str | None = Field(None, pattern="^(first|always)$",
                                       description="page checksum on first read per process, or always",
                                       json_schema_extra=public)
            max_open_segments: int | None = Field(None, ge=4, description="open segment files kept per namespace")
            preallocate: bool | int | str | None = Field(None, description="fallocate new segments (default true)")

        _MODEL = SegmentConfig
    return _MODEL


_MODEL: type | None = None
