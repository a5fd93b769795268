"""The ``file`` backend's extra-config schema (pydantic), every scheme's keys.

The controller checks an attach against ``FileStore.config_model``: unknown keys are refused
with a did-you-mean hint, wrong types and empty or relative paths with a message naming the
key. Fields marked public may be shown by the node's status endpoints.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

_PUBLIC: JsonDict = {"public": True}


class FileBackendConfig(BaseModel):
    """Extra-config keys of the ``file`` backend (``pagefile``, ``sglang`` and ``segment`` schemes)."""

    model_config = ConfigDict(extra="forbid")

    # every scheme
    path: str | None = Field(None, description="directory of the pages (absolute)", json_schema_extra=_PUBLIC)
    file_storage_path: str | None = Field(None, description="SGLang's name of 'path'", json_schema_extra=_PUBLIC)
    scheme: str | None = Field(None, pattern="^(pagefile|sglang|segment)$",
                               description="how pages lie on disk: pagefile, sglang or segment",
                               json_schema_extra=_PUBLIC)
    max_bytes: int | str | None = Field(None, description="size bound in bytes ('64GiB' accepted)",
                                        json_schema_extra=_PUBLIC)
    max_pages: int | None = Field(None, ge=1, description="page-count bound", json_schema_extra=_PUBLIC)
    fsync: bool | int | str | None = Field(None, description="fsync each page", json_schema_extra=_PUBLIC)
    io_threads: int | None = Field(None, ge=1, le=64, description="threads per batch", json_schema_extra=_PUBLIC)
    # pagefile
    checksum: str | None = Field(None, pattern="^(xxh3|crc32)$", description="xxh3 or crc32",
                                 json_schema_extra=_PUBLIC)
    remove_corrupt: bool | int | str | None = Field(None, description="delete a corrupt page file",
                                                   json_schema_extra=_PUBLIC)
    # sglang
    sglang_layout: str | None = Field(None, description="host layout of the SGLang server that wrote an "
                                      "unmarked folder", json_schema_extra=_PUBLIC)
    sglang_dtype: str | None = Field(None, description="KV dtype of that server", json_schema_extra=_PUBLIC)
    # segment
    segment_bytes: int | str | None = Field(None, description="target segment file size (default 64MiB)",
                                            json_schema_extra=_PUBLIC)
    chunk_bytes: int | str | None = Field(None, description="bytes per preadv/pwritev (default 1MiB)",
                                          json_schema_extra=_PUBLIC)
    verify: str | None = Field(None, pattern="^(first|always)$",
                               description="page checksum on first read per process, or always",
                               json_schema_extra=_PUBLIC)
    max_open_segments: int | None = Field(None, ge=4, description="open segment files kept per namespace")
    preallocate: bool | int | str | None = Field(None, description="fallocate new segments (default true)")
