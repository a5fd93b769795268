"""The flat-page paths (``get``/``set``/``batch_get``/``batch_set``) through a staging buffer.

A flat page (``HostKVPool.get_data_page(flat=True)``, SGLang's ``get_data_page``) is the
page's stored bytes; its objects are its first and second halves (MHA: K, V) or the whole
page (MLA), the same objects the zero-copy path moves from the pool's pieces. Pages of
another size than the pool's (v2 sidecar state pages) are split the same way. Mooncake moves
only registered memory, so pages are copied through one registered staging buffer, grown on
demand. SGLang's legacy calls may pass an address and a size instead of a tensor.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hicache_mooncake.objects import ObjectClient

#: The smallest staging buffer (registering memory costs a round of transfer-engine work).
MIN_STAGING_BYTES = 1 << 20


def as_bytes(value: Any, size: Any = None) -> torch.Tensor | None:
    """A flat uint8 view of a page given as a CPU tensor, or as an address and a byte size."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            return None
        return value.contiguous().view(-1).view(torch.uint8)
    if isinstance(value, int) and isinstance(size, int) and size > 0:
        raw = (ctypes.c_uint8 * size).from_address(value)
        return torch.frombuffer(raw, dtype=torch.uint8)
    return None


def object_sizes(nbytes: int, parts: int) -> list[int] | None:
    """Sizes of the ``parts`` objects of a flat page of ``nbytes``: equal halves for MHA (K, V;
    an odd remainder goes to the first), the whole page for MLA; None when it cannot be stored.

    One rule for every size, so a v2 sidecar page (a Mamba/SWA state, under its own sidecar
    hash) is stored, found and read like a KV page.
    """
    if nbytes < parts:
        return None
    base, rest = divmod(nbytes, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


class StagingBuffer:
    """One registered byte buffer, grown on demand; hold ``lock`` while using ``view``."""

    def __init__(self, register: Callable[[torch.Tensor], None], unregister: Callable[[int], None]) -> None:
        self._register = register
        self._unregister = unregister
        self._buf: torch.Tensor | None = None
        self.lock = threading.Lock()

    def view(self, nbytes: int) -> torch.Tensor:
        if self._buf is None or self._buf.numel() < nbytes:
            if self._buf is not None:
                self._unregister(self._buf.data_ptr())
                self._buf = None
            buf = torch.empty(max(nbytes, MIN_STAGING_BYTES), dtype=torch.uint8)
            self._register(buf)
            self._buf = buf
        return self._buf[:nbytes]


def put_pages(
    objects: ObjectClient, staging: StagingBuffer, names: Sequence[Sequence[str]], pages: Sequence[torch.Tensor],
    sizes: Sequence[Sequence[int]],
) -> list[bool]:
    """Store each flat page (uint8) as its objects; per page: every object stored."""
    with staging.lock:
        buf = staging.view(sum(p.numel() for p in pages))
        base = buf.data_ptr()
        obj_keys: list[str] = []
        ptrs: list[int] = []
        obj_sizes: list[int] = []
        offset = 0
        for page_names, page, page_sizes in zip(names, pages, sizes):
            buf[offset : offset + page.numel()].copy_(page)
            for name, size in zip(page_names, page_sizes):
                obj_keys.append(name)
                ptrs.append(base + offset)
                obj_sizes.append(size)
                offset += size
        ok = objects.put(obj_keys, ptrs, obj_sizes)
    return _per_page(ok, [len(s) for s in sizes])


def get_pages(
    objects: ObjectClient, staging: StagingBuffer, names: Sequence[Sequence[str]], sizes: Sequence[Sequence[int]],
    deliver: Callable[[int, torch.Tensor], None],
) -> list[bool]:
    """Read each page's objects; ``deliver(i, bytes)`` gets every whole page (a staging view)."""
    with staging.lock:
        total = sum(sum(s) for s in sizes)
        buf = staging.view(total)
        base = buf.data_ptr()
        obj_keys: list[str] = []
        ptrs: list[int] = []
        obj_sizes: list[int] = []
        starts: list[int] = []
        offset = 0
        for page_names, page_sizes in zip(names, sizes):
            starts.append(offset)
            for name, size in zip(page_names, page_sizes):
                obj_keys.append(name)
                ptrs.append(base + offset)
                obj_sizes.append(size)
                offset += size
        ok = _per_page(objects.get(obj_keys, ptrs, obj_sizes, obj_sizes), [len(s) for s in sizes])
        for i, (start, page_sizes, good) in enumerate(zip(starts, sizes, ok)):
            if good:
                deliver(i, buf[start : start + sum(page_sizes)])
    return ok


def _per_page(per_object: list[bool], counts: Sequence[int]) -> list[bool]:
    out: list[bool] = []
    i = 0
    for n in counts:
        out.append(all(per_object[i : i + n]))
        i += n
    return out
