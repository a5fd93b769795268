"""A backend written the way SGLang's ``dynamic`` backends are, loaded by hicache unchanged.

It does not import hicache at all and does not subclass any base class; its constructor takes
``(storage_config, kwargs)`` as SGLang calls it. Load it with::

    hicache check dynamic --config '{"backend_name": "sgl_dict",
        "module_path": "hicache_example_backend.sglang_style", "class_name": "SGLangStyleStore",
        "interface_v1": 1}'

``interface_v1`` 1 uses its own ``batch_get_v1``/``batch_set_v1`` (written against SGLang's host
pool methods); 0 lets hicache serve those through ``get``/``set``.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_SHARED: dict[str, dict[str, bytes]] = {}  # one dict per "store" name, for the life of the process


class SGLangStyleStore:
    def __init__(self, storage_config: Any, kwargs: dict[str, Any] | None = None) -> None:
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        self.pages = _SHARED.setdefault(str(extra.get("store", "default")), {})
        model = (getattr(storage_config, "model_name", None) or "default").replace("/", "-")
        self.suffix = f"_{model}_{storage_config.tp_rank}_{storage_config.tp_size}"
        self.lock = threading.Lock()
        self.mem_pool_host: Any = None

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        self.mem_pool_host = mem_pool_host

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        with self.lock:
            data = self.pages.get(key + self.suffix)
        if data is None:
            return None
        page = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if target_location is not None:
            target_location.view(-1).view(torch.uint8).copy_(page)
            return target_location  # type: ignore[no-any-return]
        return page

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None) -> list[torch.Tensor | None]:
        locs = target_locations if target_locations is not None else [None] * len(keys)
        return [self.get(k, loc) for k, loc in zip(keys, locs)]

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        if value is None:
            return False
        data = value.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        with self.lock:
            self.pages[key + self.suffix] = data
        return True

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None) -> bool:
        return all(self.set(k, v) for k, v in zip(keys, values or []))

    def exists(self, key: str) -> bool:
        with self.lock:
            return key + self.suffix in self.pages

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        for i, key in enumerate(keys):
            if not self.exists(key):
                return i
        return len(keys)

    def batch_get_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        pool, out = self.mem_pool_host, []
        for i, key in enumerate(keys):
            start = int(host_indices[i * pool.page_size])
            page = self.get(key)
            if page is None:
                out.append(False)
                continue
            pool.set_from_flat_data_page(start, page.view(pool.dtype))
            out.append(True)
        return out

    def batch_set_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        pool = self.mem_pool_host
        return [
            self.set(key, pool.get_data_page(int(host_indices[i * pool.page_size]), flat=True))
            for i, key in enumerate(keys)
        ]

    def clear(self) -> None:
        with self.lock:
            for k in [k for k in self.pages if k.endswith(self.suffix)]:
                del self.pages[k]

    def get_stats(self) -> Any:
        return None
