# ruff: noqa: UP006, UP035, UP045  (typing.List/Optional, as SGLang's sources write them)
"""A zero-copy backend in the manner of SGLang's Mooncake store (sglang 0.5.x), for SGLang.

A plain class (no base class, no hicache import) constructed as SGLang's dynamic loader does,
``(storage_config, kwargs)``. It registers the host pool's ``kv_buffer`` the way Mooncake
registers it with its transfer engine, and moves pages with ``ctypes.memmove`` between the
pointers ``mem_pool_host.get_page_buffer_meta(host_indices)`` gives (K then V per page for
MHA, one latent piece for MLA) and its own byte store: a directory of segment files, one per
key piece (``{hash}_{tp_rank}_k`` / ``_v``, MLA ``{hash}_k``), standing in for Mooncake's
distributed store. Like Mooncake it needs a ``page_first*`` layout (asserted on registration),
skips pieces that already exist on a put, and returns one bool per page from the v1 calls.

Return codes mirror Mooncake's client: 0 (or bytes read) is success, negative is an error.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import uuid
from typing import Any, List, Optional

import torch

logger = logging.getLogger(__name__)

NOT_FOUND = -704
TRANSFER_FAILED = -800


class ZeroCopyStore:
    def __init__(self, storage_config: Any, kwargs: Optional[dict] = None):
        extra = storage_config.extra_config or {}
        store_dir = extra.get("store_dir")
        if not store_dir:
            raise ValueError("ZeroCopyStore needs 'store_dir' in the extra config")
        self.store_dir = store_dir
        os.makedirs(self.store_dir, exist_ok=True)
        self.is_mla_backend = storage_config.is_mla_model
        self.local_rank = storage_config.tp_rank
        self.mem_pool_host = None
        self.registered = None
        self.lock = threading.Lock()
        self.stats = {"put_pieces": 0, "get_pieces": 0, "skipped_existing": 0}

    # -- the host pool, as Mooncake registers it ----------------------------------------
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        self.mem_pool_host = mem_pool_host
        assert self.mem_pool_host.layout in [
            "page_first",
            "page_first_direct",
        ], "zero copy store only support page first or page first direct layout"
        buffer = self.mem_pool_host.kv_buffer
        self.registered = (buffer.data_ptr(), buffer.numel() * buffer.element_size())
        self.page_size = self.mem_pool_host.page_size
        per_page = self.mem_pool_host.get_size_per_token() * self.page_size
        self.piece_bytes = per_page if self.is_mla_backend else per_page // 2

    def _check_registered(self, ptr: int, size: int) -> bool:
        base, total = self.registered
        return base <= ptr and ptr + size <= base + total

    # -- the byte store ------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self.store_dir, key)

    def _batch_exist(self, key_strs: List[str]) -> List[int]:
        return [1 if os.path.exists(self._path(k)) else 0 for k in key_strs]

    def _put(self, key: str, ptr: int, size: int) -> int:
        if not self._check_registered(ptr, size):
            return TRANSFER_FAILED
        return self._write(key, ctypes.string_at(ptr, size))

    def _write(self, key: str, data: bytes) -> int:
        tmp = self._path(f".{key}.{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(key))
        except OSError:
            return TRANSFER_FAILED
        return 0

    def _get_into(self, key: str, ptr: int, size: int) -> int:
        if not self._check_registered(ptr, size):
            return TRANSFER_FAILED
        try:
            with open(self._path(key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return NOT_FOUND
        if len(data) != size:
            return TRANSFER_FAILED
        ctypes.memmove(ptr, data, size)
        return size

    # -- Mooncake's preprocessing / postprocessing ----------------------------------------
    def _key_strs(self, keys: List[str]) -> List[str]:
        if self.is_mla_backend:
            return [f"{k}_k" for k in keys]
        out = []
        for k in keys:
            out.append(f"{k}_{self.local_rank}_k")
            out.append(f"{k}_{self.local_rank}_v")
        return out

    def _batch_preprocess(self, keys: List[str], host_indices: torch.Tensor):
        assert len(keys) > 0
        assert len(keys) == len(host_indices) // self.page_size
        ptr_list, element_size_list = self.mem_pool_host.get_page_buffer_meta(host_indices)
        key_strs = self._key_strs(keys)
        assert len(key_strs) == len(ptr_list)
        return key_strs, ptr_list, element_size_list

    def _batch_postprocess(self, results: List[int], is_set_operate: bool = False) -> List[bool]:
        if self.is_mla_backend:
            return [r == 0 if is_set_operate else r > 0 for r in results]
        pairs = zip(results[::2], results[1::2])
        return [
            (k == 0 and v == 0) if is_set_operate else (k > 0 and v > 0) for k, v in pairs
        ]

    # -- zero copy v1 ----------------------------------------------------------------------
    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info: Any = None) -> List[bool]:
        key_strs, ptrs, sizes = self._batch_preprocess(keys, host_indices)
        results = [self._get_into(k, p, s) for k, p, s in zip(key_strs, ptrs, sizes)]
        with self.lock:
            self.stats["get_pieces"] += sum(1 for r in results if r > 0)
        return self._batch_postprocess(results, is_set_operate=False)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info: Any = None) -> List[bool]:
        key_strs, ptrs, sizes = self._batch_preprocess(keys, host_indices)
        exist_result = self._batch_exist(key_strs)
        results = []
        for key, ptr, size, exist in zip(key_strs, ptrs, sizes, exist_result):
            if exist == 1:  # Mooncake keeps the stored value on a duplicate put
                results.append(0)
                with self.lock:
                    self.stats["skipped_existing"] += 1
                continue
            results.append(self._put(key, ptr, size))
        with self.lock:
            self.stats["put_pieces"] += sum(1 for r, e in zip(results, exist_result) if r == 0 and e != 1)
        return self._batch_postprocess(results, is_set_operate=True)

    def batch_exists(self, keys: List[str], extra_info: Any = None) -> int:
        query_keys = self._key_strs(keys)
        key_multiplier = 1 if self.is_mla_backend else 2
        exist_result = self._batch_exist(query_keys)
        for i in range(len(query_keys)):
            if exist_result[i] != 1:
                return i // key_multiplier
        return len(query_keys) // key_multiplier

    # -- single-page methods: pointer form (Mooncake) or tensor form ----------------------
    def _pieces(self, value: torch.Tensor) -> List[bytes]:
        raw = value.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        if self.is_mla_backend:
            return [raw]
        half = len(raw) // 2
        return [raw[:half], raw[half:]]

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        key_strs = self._key_strs([key])
        if all(e == 1 for e in self._batch_exist(key_strs)):
            return True
        if isinstance(target_location, int) and target_sizes is not None:  # Mooncake's pointer form
            return self._put(key_strs[0], target_location, int(target_sizes)) == 0
        if not isinstance(value, torch.Tensor):
            return False
        return all([self._write(k, piece) == 0 for k, piece in zip(key_strs, self._pieces(value))])

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        key_strs = self._key_strs([key])
        if isinstance(target_location, int) and target_sizes is not None:  # Mooncake's pointer form
            return self._get_into(key_strs[0], target_location, int(target_sizes)) >= 0
        chunks = []
        for k in key_strs:
            try:
                with open(self._path(k), "rb") as f:
                    chunks.append(f.read())
            except FileNotFoundError:
                return None
        data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            dst = target_location.view(-1).view(torch.uint8)
            if dst.numel() != data.numel():
                return None
            dst.copy_(data)
            return target_location
        return data

    def exists(self, key: str) -> bool:
        return all(e == 1 for e in self._batch_exist(self._key_strs([key])))

    def batch_get(self, keys: List[str], target_locations: Any = None, target_sizes: Any = None) -> List[Any]:
        locs = target_locations or [None] * len(keys)
        return [self.get(k, loc) for k, loc in zip(keys, locs)]

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        return all([self.set(k, v) for k, v in zip(keys, values)])

    def get_stats(self) -> dict:
        with self.lock:
            return dict(self.stats)

    def close(self) -> None:
        self.registered = None
