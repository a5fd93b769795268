"""The format manifest of a ``sglang``-scheme folder: what bytes its raw page files hold.

SGLang's ``HiCacheFile`` writes each page raw, as the host pool lays it out, and its file
names say model and shard but not dtype or layout: a ``page_first`` bf16 page and a
``layer_first`` fp16 page of the same model are files of the same name and size. So hicache
keeps, beside the pages, one small manifest per pool and suffix recording their format::

    <folder>/.hicache-format.<pool><suffix>.json
    {"schema": "hicache-file/sglang-manifest/1", "pool": "kv", "suffix": "_m_0_1",
     "format": "mha-bf16-l32h8d128-p64-ctlhd", "page_bytes": 1048576,
     "source": "adopted" | "declared", "written_by": "hicache-file 0.1.0"}

(dot-named and not ``.bin``: SGLang's scan and evictor skip it). ``format`` is
``hicache_core.memory.pages.PageFormat.tag()``: kind, dtype, geometry, page size, byte order.

The rule, per pool and suffix, decided once per store (``FormatGuard.verdict``):

1. **A manifest is there**: pages are read and written only by a pool of exactly that format.
   Any other pool gets misses and refused writes, counted as ``format_mismatch``.
2. **No manifest, no page of this pool and suffix in the folder** (a fresh folder): the pool's
   format is adopted: the manifest is written (atomically; the first writer wins, a second
   compares against the winner) before any page is read or written.
3. **No manifest, but pages are there** (SGLang wrote them; it writes no manifest): they are
   trusted only when the operator declares the writing server's format with extra-config
   ``sglang_layout`` and ``sglang_dtype``. A declaration equal to the pool's format is recorded
   in the manifest (``source: declared``) and pages are served; a declaration that differs,
   or none, means misses and refused writes, counted (``format_mismatch`` / ``format_unknown``).

SGLang itself neither reads nor writes the manifest: an SGLang server writing into a folder
hicache has marked must run with the recorded layout and dtype (its pages are otherwise
served wrong by nobody but SGLang's own readers).
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import replace
from typing import Any

import torch

from hicache_core.memory.pages import PageFormat, dtype_code, page_format
from hicache_file import __version__
from hicache_file.fileio import tmp_tag, unlink_quietly

SCHEMA = "hicache-file/sglang-manifest/1"
_KEY_PART = re.compile(r"[0-9A-Za-z-]+")

#: ``verdict`` answers: None (serve), or one of these with a reason.
MISMATCH = "format_mismatch"
UNKNOWN = "format_unknown"


def manifest_path(folder: str, pool: str, suffix: str) -> str:
    return os.path.join(folder, f".hicache-format.{pool}{suffix}.json")


def read_manifest(path: str) -> dict[str, Any] | None:
    """The manifest at ``path``; None when absent; an unreadable one names no usable format."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"format": f"<unreadable manifest: {exc}>"}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("format"), str):
        return {"format": "<manifest of an unknown schema>"}
    return data


def write_manifest(path: str, record: dict[str, Any]) -> dict[str, Any]:
    """Create the manifest atomically unless one exists; returns the manifest in force."""
    tmp = f"{path}.{tmp_tag()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails when another writer got there first: theirs stands
        except FileExistsError:
            pass
    finally:
        unlink_quietly(tmp)
    return read_manifest(path) or {"format": "<manifest vanished>"}


def has_pages(folder: str, pool: str, suffix: str) -> bool:
    """Whether ``folder`` holds page files of ``pool`` under ``suffix`` (SGLang's names)."""
    tail = f"{suffix}.bin" if pool == "kv" else f".{pool}{suffix}.bin"
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(tail) and _KEY_PART.fullmatch(name[: -len(tail)]):
                    return True
    except FileNotFoundError:
        return False
    return False


def declared_tag(fmt: PageFormat, layout: str | None, dtype: str | None) -> str | None:
    """The format tag of pages a server with ``layout`` and ``dtype`` writes for a pool like ``fmt``.

    None unless both are declared (either one alone can leave the bytes ambiguous) and the pool
    is a KV pool (sidecar formats cannot be declared).
    """
    if layout is None or dtype is None or fmt.kind not in ("mha", "mla"):
        return None
    from hicache_core.memory.host_pool import HostKVPool

    probe = HostKVPool(
        size=fmt.page_size, page_size=fmt.page_size, layer_num=1, head_num=1, head_dim=1,
        dtype=getattr(torch, dtype), layout=layout, is_mla=fmt.kind == "mla", pin_memory=False,
    )
    order = page_format(probe).order
    return replace(fmt, dtype=dtype_code(getattr(torch, dtype)), order=order).tag()


class FormatGuard:
    """Decides, once per pool, whether this store may read and write a folder's pages."""

    def __init__(self, folder: str, layout: str | None, dtype: str | None) -> None:
        self.folder = folder
        self.layout = layout
        self.dtype = dtype
        self._verdicts: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        self._lock = threading.Lock()

    def verdict(self, pool: str, suffix: str, fmt: PageFormat) -> tuple[str, str] | None:
        """None when pages of ``pool`` under ``suffix`` are this format's; else ``(counter, why)``."""
        tag = fmt.tag()
        key = (pool, suffix, tag)
        if key in self._verdicts:
            return self._verdicts[key]
        with self._lock:
            if key not in self._verdicts:
                self._verdicts[key] = self._decide(pool, suffix, fmt, tag)
            return self._verdicts[key]

    def _decide(self, pool: str, suffix: str, fmt: PageFormat, tag: str) -> tuple[str, str] | None:
        path = manifest_path(self.folder, pool, suffix)
        manifest = read_manifest(path)
        if manifest is None:
            record = {"schema": SCHEMA, "pool": pool, "suffix": suffix, "format": tag,
                      "page_bytes": fmt.page_bytes, "written_by": f"hicache-file {__version__}"}
            if not has_pages(self.folder, pool, suffix):
                manifest = write_manifest(path, {**record, "source": "adopted"})
            else:
                declared = declared_tag(fmt, self.layout, self.dtype) if pool == "kv" else None
                if declared is None:
                    return UNKNOWN, (
                        f"{self.folder} holds {pool} pages of suffix {suffix!r} without a hicache format "
                        "manifest (written by SGLang?); their dtype and layout are unknown, so none is "
                        "served. Set extra-config 'sglang_layout' and 'sglang_dtype' to those of the "
                        "SGLang server that wrote them, or use an empty folder"
                    )
                if declared != tag:
                    return MISMATCH, (
                        f"declared SGLang pages ({self.layout}, {self.dtype}: {declared}) are not this "
                        f"pool's format {tag}; they are not served"
                    )
                manifest = write_manifest(path, {**record, "source": "declared"})
        if manifest.get("format") != tag:
            return MISMATCH, (
                f"{path} says the pages are {manifest.get('format')}, this pool's are {tag} "
                "(another dtype, layout, geometry or page size); they are not served"
            )
        return None
