"""Pages shared across TP sizes: each ``page_head`` page stored as head groups.

With the ``page_head`` layout a page's heads are contiguous (per K and per V), so a rank of TP
size ``t`` can store its page as ``tp_lcm_size / t`` head groups, each exactly the page that
rank ``r * factor + i`` of TP size ``tp_lcm_size`` holds. Each group is stored by an ordinary
backend instance configured as that finer rank and registered with a zero-copy view of those
heads (``HostKVPool.head_group_view``), so the group lands under the finer rank's own key
namespace (``tp{r}of{lcm}``, format with its head count): nodes of any TP size that divides
``tp_lcm_size`` read each other's pages. Enabled, as in SGLang, by ``tp_lcm_size`` in the
extra config when the pool is ``page_head``, the model is not MLA and ``tp_lcm_size > tp_size``
(``HiCacheStorageConfig.should_split_heads``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import LayoutError
from hicache_core.spec.storage import HiCacheStorage

OpenBackend = Callable[[HiCacheStorageConfig], HiCacheStorage]


def split_factor(config: HiCacheStorageConfig) -> int:
    """How many head groups each page is stored as (1: not split)."""
    if not config.should_split_heads or not config.tp_lcm_size:
        return 1
    if config.tp_lcm_size % config.tp_size:
        raise ValueError(
            f"tp_lcm_size {config.tp_lcm_size} must be a multiple of tp_size {config.tp_size}"
        )
    return config.tp_lcm_size // config.tp_size


def group_configs(config: HiCacheStorageConfig) -> list[HiCacheStorageConfig]:
    """The configs of the finer-TP ranks whose pages this rank's head groups are."""
    factor = split_factor(config)
    return [
        replace(config, tp_rank=config.tp_rank * factor + i, tp_size=config.tp_size * factor,
                tp_lcm_size=None, should_split_heads=False)
        for i in range(factor)
    ]


class SplitHeadsStorage(HiCacheStorage):
    """One backend per head group, driven together; a page is a hit only when every group is."""

    contract_version = "1.0"

    def __init__(self, config: HiCacheStorageConfig, open_backend: OpenBackend) -> None:
        super().__init__(config)
        self.groups: list[HiCacheStorage] = []
        try:
            for cfg in group_configs(self.config):
                self.groups.append(open_backend(cfg))
        except BaseException:
            self.close()
            raise
        if self.groups and type(self) is SplitHeadsStorage:
            # Declare the groups' backend's capabilities (callers read them off the class).
            self.__class__ = _with_capabilities(type(self.groups[0]).capabilities)

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        if getattr(mem_pool_host, "layout", None) != "page_head":
            raise LayoutError("tp_lcm_size splits pages by head and needs the page_head layout; "
                              "start with --hicache-mem-layout page_head or drop tp_lcm_size")
        super().register_mem_pool_host(mem_pool_host)
        n = len(self.groups)
        for i, backend in enumerate(self.groups):
            backend.register_mem_pool_host(mem_pool_host.head_group_view(i, n))

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        # Sidecar states are per real rank: the first group's backend keeps them (its shard
        # names a finer rank that only this rank maps to).
        self.groups[0].register_mem_host_pool_v2(host_pool, host_pool_name)

    def on_host_pools_registered(self) -> None:
        for backend in self.groups:
            backend.on_host_pools_registered()

    def close(self) -> None:
        for backend in self.groups:
            backend.close()

    def clear(self) -> None:
        for backend in self.groups:
            backend.clear()

    def delete(self, key: str) -> bool:
        return all([backend.delete(key) for backend in self.groups])

    def get_stats(self) -> dict[str, Any] | None:
        return {f"group{i}": backend.get_stats() for i, backend in enumerate(self.groups)}

    def health_check(self) -> None:
        for backend in self.groups:
            backend.health_check()

    # ------------------------------------------------------------------ existence
    def exists(self, key: str) -> bool:
        return all(backend.exists(key) for backend in self.groups)

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        found = [True] * len(keys)
        for backend in self.groups:
            found = [a and b for a, b in zip(found, backend.exists_many(keys, extra_info))]
        return found

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        return min((int(b.batch_exists(keys, extra_info)) for b in self.groups), default=0)

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        ok = [True] * len(keys)
        for backend in self.groups:
            ok = [a and bool(b) for a, b in zip(ok, backend.batch_get_v1(keys, host_indices, extra_info))]
        return ok

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        ok = [True] * len(keys)
        for backend in self.groups:
            ok = [a and bool(b) for a, b in zip(ok, backend.batch_set_v1(keys, host_indices, extra_info))]
        return ok

    # ------------------------------------------------------------------ flat pages
    def _group_slices(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat page (kv, head, token, layer, dim) as each group's heads."""
        pool = self.mem_pool_host
        if pool is None:
            raise LayoutError("register the host pool before flat-page I/O")
        page = flat.view(2, pool.head_num, -1)
        per = pool.head_num // len(self.groups)
        return [page[:, i * per : (i + 1) * per] for i in range(len(self.groups))]

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        pool = self.mem_pool_host
        if pool is None:
            return None
        target = target_location if isinstance(target_location, torch.Tensor) else pool.get_dummy_flat_data_page()
        for backend, part in zip(self.groups, self._group_slices(target)):
            staging = torch.empty(part.numel(), dtype=part.dtype)
            if backend.get(key, staging) is None:
                return None
            part.copy_(staging.view(part.shape))
        return target

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        parts = self._group_slices(value.contiguous().view(-1))
        return all([backend.set(key, part.contiguous().view(-1)) for backend, part in zip(self.groups, parts)])


_CLASSES: dict[Capabilities, type[SplitHeadsStorage]] = {}


def _with_capabilities(caps: Capabilities) -> type[SplitHeadsStorage]:
    if caps not in _CLASSES:
        _CLASSES[caps] = type("SplitHeadsStorage", (SplitHeadsStorage,), {"capabilities": caps})
    return _CLASSES[caps]


def with_head_split(config: HiCacheStorageConfig, pool: Any) -> HiCacheStorageConfig:
    """``config`` with SGLang's head-split rule applied for ``pool``.

    ``tp_lcm_size`` is taken from the extra config (as SGLang's controller pops it);
    ``should_split_heads`` is true for an MHA ``page_head`` pool when ``tp_lcm_size > tp_size``.
    """
    extra = config.extra()
    lcm = extra.pop("tp_lcm_size", None) or config.tp_lcm_size
    if not lcm:
        return config
    lcm = int(lcm)
    if lcm % config.tp_size:
        raise ValueError(f"tp_lcm_size {lcm} must be a multiple of tp_size {config.tp_size}")
    split = (not config.is_mla_model and getattr(pool, "layout", None) == "page_head" and lcm > config.tp_size)
    return replace(config, extra_config=extra, tp_lcm_size=lcm, should_split_heads=split)
