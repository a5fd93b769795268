"""Gallery, part two: backends that move the right bytes but touch memory they must not, or
hand them back in a form a caller cannot use.

Each is a correct reference backend (``reference.py``) with one method changed; ``GALLERY``
(in ``defects.py``) lists the kit check that must fail each and the words it must use.
"""

from __future__ import annotations

from typing import Any

import torch

from broken_backends.reference import MemoryStore, page_bytes_of
from hicache_core import Capabilities
from hicache_core.memory.pages import write_flat_page


def page_bytes_of_any(value: Any) -> bytes | None:
    """Bytes kept as they are, or the bytes of a kept tensor."""
    return page_bytes_of(value) if isinstance(value, torch.Tensor) else value


class ScribblesNeighbourOnGet(MemoryStore):
    """batch_get_v1 loads each hit into the right host page, then zeroes the host page after it
    (an off-by-one end of a bulk copy): memory outside ``host_indices`` is overwritten."""

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        got = super().batch_get_v1(keys, host_indices, extra_info)
        pool = self._pool_for_v1(keys, host_indices)
        pages = pool.indices_to_pages(host_indices)
        for hit, page in zip(got, pages):
            if hit and page + 1 not in pages:
                write_flat_page(pool, (page + 1) % pool.page_num, pool.get_dummy_flat_data_page())
        return got


class ZeroFillsMissesInABatch(MemoryStore):
    """A batch with at least one hit is read as one bulk copy: the host pages of the keys it
    misses are zero-filled (reported False, but their contents are destroyed)."""

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        got = super().batch_get_v1(keys, host_indices, extra_info)
        if any(got):
            pool = self._pool_for_v1(keys, host_indices)
            for hit, page in zip(got, pool.indices_to_pages(host_indices)):
                if not hit:
                    write_flat_page(pool, page, pool.get_dummy_flat_data_page())
        return got


class SetClearsHostPages(MemoryStore):
    """batch_set_v1 stores each page, then zeroes the host page it read (it "moves" pages to
    the store): a write must not modify the host pool."""

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        got = super().batch_set_v1(keys, host_indices, extra_info)
        pool = self._pool_for_v1(keys, host_indices)
        for page in pool.indices_to_pages(host_indices):
            write_flat_page(pool, page, pool.get_dummy_flat_data_page())
        return got


class StoresAReference(MemoryStore):
    """set() keeps the caller's tensor, not a copy of its bytes: the v1 path hands it a view of
    the host page, so the stored page changes when the host page is reused."""

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        with self._lock:
            self._data[self._name(key)] = value  # type: ignore[assignment]
        return True

    def _load(self, name: str) -> bytes | None:
        return page_bytes_of_any(super()._load(name))


class NoOpV1Read(MemoryStore):
    """batch_get_v1 reports a hit for every stored key but copies nothing into the host pages."""

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        self._pool_for_v1(keys, host_indices)
        return [self.exists(k) for k in keys]


class LeavesTargetUnwritten(MemoryStore):
    """get(key, target_location) returns a new tensor holding the page and leaves the target
    as it was: a caller reading into its own buffer (SGLang's HiCacheFile contract) gets the old
    bytes with a hit."""

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        data = self._load(self._name(key))
        if data is None:
            return None
        page = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            return page.view(target_location.dtype)
        return page


class ReturnsBytesNotPages(MemoryStore):
    """get(key, target_location) fills the target, but returns it as a flat uint8 tensor (the
    right bytes, the wrong dtype and length): SGLang's controller reshapes what get returns into
    the host pool's page shape and fails."""

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        got = super().get(key, target_location, target_sizes)
        return None if got is None else got.view(-1).view(torch.uint8)


class MissReturnsTarget(MemoryStore):
    """get(key, target_location) returns the target even when the key is absent (a C-style
    "fill this buffer" call that ignores the status); get without a target and the v1 path
    answer correctly. SGLang's generic controller path takes the returned target as a hit.
    (Neither shared nor deletable, so only the basic miss checks can see it.)"""

    capabilities = Capabilities()

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        got = super().get(key, target_location, target_sizes)
        return target_location if got is None and isinstance(target_location, torch.Tensor) else got

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        out = []
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            data = self._load(self._name(key))
            if data is not None:
                write_flat_page(pool, page, torch.frombuffer(bytearray(data), dtype=torch.uint8))
            out.append(data is not None)
        return out


class V2ScribblesStateSlots(MemoryStore):
    """batch_get_v2 loads every pool right, then zeroes the sidecar state slot after each one
    it loaded (a bulk copy one slot too long)."""

    def batch_get_v2(self, transfers: list[Any], extra_info: Any = None) -> dict[str, list[bool]]:
        results = super().batch_get_v2(transfers, extra_info)
        for t in transfers:
            name = getattr(t.name, "value", t.name)
            if name == "kv" or t.host_indices is None:
                continue
            pool = self._v2_pool(t.name)
            slots = {int(i) for i in t.host_indices}
            for slot in slots:
                if slot + 1 < pool.kv_buffer.shape[0] and slot + 1 not in slots:
                    pool.kv_buffer[slot + 1].zero_()
        return results


class SlotsOf256KiB(MemoryStore):
    """Keeps pages in fixed 256 KiB slots: a bigger page is cut to its first 256 KiB on set, and
    a read fills the rest of the target with zeros. Pages of the kit's small pools fit."""

    SLOT = 256 * 1024

    def _store(self, name: str, data: bytes) -> bool:
        return super()._store(name, data[: self.SLOT])

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        data = self._load(self._name(key))
        if data is None:
            return None
        if isinstance(target_location, torch.Tensor):
            raw = target_location.view(-1).view(torch.uint8)
            raw.zero_()
            raw[: len(data)].copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return target_location
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
