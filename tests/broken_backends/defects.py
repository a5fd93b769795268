"""The gallery: backends that are each wrong in exactly one way the storage contract forbids.

Every class is a correct reference backend (``reference.py``) with one method changed. The
kit must fail each of them, naming the property it breaks (``GALLERY`` says which check, and
the words it must use); ``tests/test_kit_catches_broken_backends.py`` runs it.

Stale-after-overwrite is not here: the contract lets an overwrite leave the old page or the
new one. A torn overwrite (half old, half new) is here, because that is neither.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import replace
from typing import Any

import torch

from broken_backends.defects_pool import (
    LeavesTargetUnwritten,
    MissReturnsTarget,
    NoOpV1Read,
    ReturnsBytesNotPages,
    ScribblesNeighbourOnGet,
    SetClearsHostPages,
    SlotsOf256KiB,
    StoresAReference,
    V2ScribblesStateSlots,
    ZeroFillsMissesInABatch,
)
from broken_backends.defects_store import (
    AsciiOnlyKeys,
    BatchExistsCache,
    CaseFoldsKeys,
    ClearForgetsOnlyTheIndex,
    CutsKeysAtNul,
    DeleteForgetsOnlyTheIndex,
    DropsTailAfterAt,
    JoinsKeysIntoPaths,
    NormalizesUnicode,
    ServesDeletedPages,
    SharedReadBuffer,
    SharedStagingBuffer,
    SidecarUnderTheKvKey,
    SortsBatches,
    StripsKeys,
    TruncatesKeysAt1024,
    WritesBehind,
    ZeroFilledOnKill,
)
from broken_backends.reference import DirStore, MemoryStore
from hicache_core import Capabilities, HiCacheStorageConfig
from hicache_core.keys import model_tag, pool_namespace, shard_tag, storage_key
from hicache_core.memory.pages import read_flat_page, write_flat_page

_CREATOR_PID = os.getpid()


class NamespaceBlind(MemoryStore):
    """Keys pages by the bare page hash: every model, rank and pool shares them."""

    def _name(self, key: str) -> str:
        return key


class DtypeBlind(MemoryStore):
    """Namespaces by model and shard only: another dtype, layout or geometry shares pages."""

    def _name(self, key: str) -> str:
        return f"{key}@{model_tag(self.config.model_name)}.{shard_tag(self.config, 'mha')}"


class CpBlind(MemoryStore):
    """Leaves attention context parallelism out of the namespace: cp ranks share pages."""

    def _name(self, key: str) -> str:
        config = replace(self.config, attn_cp_rank=0, attn_cp_size=1)
        return storage_key(key, pool_namespace(config, self.mem_pool_host))


class ExistsIgnoresNamespace(MemoryStore):
    """exists() answers for any namespace; get() (correctly) does not: exists says True for
    pages it cannot read."""

    def exists(self, key: str) -> bool:
        with self._lock:
            return any(name.split("@", 1)[0] == key for name in self._data)


class IgnoresHostIndicesOnSet(MemoryStore):
    """batch_set_v1 stores host pages 0..n-1 whatever host_indices say."""

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        return [self.set(k, read_flat_page(pool, i)) for i, k in enumerate(keys)]


class ReadsOneHostPageOff(MemoryStore):
    """batch_get_v1 loads the right bytes one host page past where host_indices say."""

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        out = []
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            data = self._load(self._name(key))
            if data is not None:
                write_flat_page(pool, (page + 1) % pool.page_num, torch.frombuffer(bytearray(data), dtype=torch.uint8))
            out.append(data is not None)
        return out


class SwapsKAndV(MemoryStore):
    """Stores each page with its halves swapped (MHA: V before K)."""

    def _store(self, name: str, data: bytes) -> bool:
        half = len(data) // 2
        return super()._store(name, data[half:] + data[:half])


class TruncatesPages(MemoryStore):
    """Stores all but the last 64 bytes of each page, and serves what it kept into the target."""

    def _store(self, name: str, data: bytes) -> bool:
        return super()._store(name, data[:-64])

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        data = self._load(self._name(key))
        if data is None:
            return None
        if isinstance(target_location, torch.Tensor):
            target_location.view(-1).view(torch.uint8)[: len(data)].copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return target_location
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class ForgetsOnReopen(MemoryStore):
    """Declares persistent, but every instance starts empty."""

    capabilities = Capabilities(delete=True, clear=True, persistent=True)

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self._data = {}


class V1ReturnsNone(MemoryStore):
    """batch_get_v1 returns None (SGLang's base class does), not one bool per key."""

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> Any:
        return None


class ClaimsFailedWrites(MemoryStore):
    """Every third set() is silently dropped, yet reported stored (True)."""

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self._sets = 0

    def _store(self, name: str, data: bytes) -> bool:
        with self._lock:
            self._sets += 1
            dropped = self._sets % 3 == 0
        return True if dropped else super()._store(name, data)


class TornOverwrite(MemoryStore):
    """Overwriting a page writes only the new page's first half over the old page."""

    def _store(self, name: str, data: bytes) -> bool:
        old = self._load(name)
        if old is not None and len(old) == len(data):
            half = len(data) // 2
            data = data[:half] + old[half:]
        return super()._store(name, data)


class PieceOrderOnV1(MemoryStore):
    """v1 stores a page as SGLang's ``get_page_buffer_meta`` pieces (layer_first MHA: K0, V0,
    K1, V1, ...) and reads it back the same way; ``set``/``get`` move the flat page (all K
    layers, then all V). Each path round-trips; across paths the KV comes back permuted."""

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        out = []
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            ptrs, sizes = pool.get_page_buffer_meta(pool.pages_to_indices([page]))
            out.append(self._store(self._name(key), b"".join(ctypes.string_at(p, s) for p, s in zip(ptrs, sizes))))
        return out

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        out = []
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            data = self._load(self._name(key))
            if data is not None:
                ptrs, sizes = pool.get_page_buffer_meta(pool.pages_to_indices([page]))
                at = 0
                for p, s in zip(ptrs, sizes):
                    ctypes.memmove(p, data[at:at + s], s)
                    at += s
            out.append(data is not None)
        return out


class TornOnKill(DirStore):
    """Writes each page in place (no temporary file and rename). In a forked writer process (or
    with GALLERY_SLOW_WRITES set) it writes the first half, pauses, then the rest, so a kill -9
    lands mid-page and leaves a page file of the right size with a stale tail, which a fresh
    instance serves."""

    def _store(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, len(data))
            half = len(data) // 2
            os.pwrite(fd, data[:half], 0)
            if os.getpid() != _CREATOR_PID or os.environ.get("GALLERY_SLOW_WRITES"):
                time.sleep(0.5)
            os.pwrite(fd, data[half:], half)
        finally:
            os.close(fd)
        return True


#: class -> (the kit test that must fail, words its failure message must contain).
GALLERY: dict[type, tuple[str, str]] = {
    NamespaceBlind: ("test_namespace_isolation[model]", "namespace isolation: a page written for model"),
    DtypeBlind: ("test_namespace_isolation[dtype]", "namespace isolation: a page written for dtype"),
    CpBlind: ("test_namespace_isolation[attn_cp_rank]", "namespace isolation: a page written for attention-cp rank 0"),
    ExistsIgnoresNamespace: ("test_namespace_isolation[tp_rank]", "exists() says pages"),
    IgnoresHostIndicesOnSet: ("test_v1_scattered_host_indices[mha-page_first]", "holds the bytes of host page 0"),
    ReadsOneHostPageOff: ("test_v1_scattered_host_indices[mha-page_first]", "(host_indices of get ignored or offset)"),
    SwapsKAndV: ("test_set_get_roundtrip", "K and V swapped"),
    TruncatesPages: ("test_set_get_roundtrip", "truncated or torn page"),
    ForgetsOnReopen: ("test_persistent_across_reopen", "persistence across close() and reopen"),
    V1ReturnsNone: ("test_v1_roundtrip[page_first]", "batch_get_v1 must return a list of one bool per key"),
    ClaimsFailedWrites: ("test_v1_roundtrip[page_first]", "a page reported stored must be served"),
    TornOverwrite: ("test_duplicate_set_keeps_a_whole_page", "neither the old nor the new page"),
    PieceOrderOnV1: ("test_v1_write_tensor_read[mha-layer_first]", "the two paths store different bytes"),
    TornOnKill: ("test_persistent_after_kill_9", "(a torn or wrong page)"),
    # defects_pool: the right bytes, but memory touched that must not be, or handed back unusable.
    ScribblesNeighbourOnGet: ("test_v1_roundtrip[page_first]", "outside the host_indices it was given"),
    ZeroFillsMissesInABatch: ("test_v1_partial_hits_are_per_page", "a miss must leave its host page as it was"),
    SetClearsHostPages: ("test_v1_roundtrip[page_first]", "a write must leave the host pool as it was"),
    NoOpV1Read: ("test_v1_roundtrip[page_first]", "never wrote host page"),
    StoresAReference: ("test_set_get_roundtrip", "the backend kept the tensor, not a copy"),
    LeavesTargetUnwritten: ("test_set_get_roundtrip", "did not write it into target_location"),
    ReturnsBytesNotPages: ("test_set_get_roundtrip", "return the page as the target's dtype and length"),
    SlotsOf256KiB: ("test_big_pages", "pages of 1024 KiB: batch_get_v1 of 1 MiB pages: page 0 read back differs in "
                                      "bytes 262144..1048575"),
    MissReturnsTarget: ("test_miss", "get() with a target_location of a key never written did not return None"),
    # defects_store: keys, removal, batches, threads, crashes, v2 sidecars.
    CaseFoldsKeys: ("test_odd_keys", "the upper-case key served a page that holds the bytes of the page of the "
                                     "lower-case key"),
    TruncatesKeysAt1024: ("test_odd_keys", "the 1500-character key ending in 1 served a page that holds the bytes "
                                           "of the page of the 1500-character key ending in 2"),
    AsciiOnlyKeys: ("test_odd_keys", "the cyrillic key served a page that holds the bytes of the page of the other "
                                     "cyrillic key"),
    NormalizesUnicode: ("test_odd_keys", "(NFC) served a page that holds the bytes of the page of the key with a "
                                         "combining accent (NFD)"),
    JoinsKeysIntoPaths: ("test_odd_keys", "the key with a '..' that resolves to another key served a page that holds"),
    StripsKeys: ("test_odd_keys", "the key ending in a space served a page that holds the bytes of the page of the "
                                  "same key without the trailing space"),
    CutsKeysAtNul: ("test_odd_keys", "the key with a NUL character served a page that holds the bytes of the page of "
                                     "the same key cut at its NUL"),
    DropsTailAfterAt: ("test_odd_keys", "the key with '@' and a namespace-like tail served a page that holds the bytes"),
    ClearForgetsOnlyTheIndex: ("test_clear", "clear: after clear() then close() and reopen"),
    DeleteForgetsOnlyTheIndex: ("test_delete", "delete: after delete() then close() and reopen"),
    BatchExistsCache: ("test_delete", "batch_exists() still counts removed page"),
    ServesDeletedPages: ("test_delete", "get() still serves removed page"),
    SortsBatches: ("test_batch_set_get", "batch_set paired keys and values in another order"),
    SharedStagingBuffer: ("test_concurrent_threads", "concurrent use from threads"),
    SharedReadBuffer: ("test_concurrent_threads", "concurrent use from threads"),
    WritesBehind: ("test_set_get_roundtrip", "set/get round trip: get() returned a page that differs"),
    ZeroFilledOnKill: ("test_persistent_after_kill_9", "(a torn or wrong page)"),
    SidecarUnderTheKvKey: ("test_v2_round_trip_kv_and_sidecar", "v2 round trip (KV and a sidecar pool)"),
    V2ScribblesStateSlots: ("test_v2_round_trip_kv_and_sidecar", "changed sidecar state slots"),
}
