"""The kit's fixtures and the helpers its checks share (see ``conformance`` for the overview).

Fixtures a backend author overrides: ``backend_name`` (class attribute) or ``open_backend``;
``storage_config``; ``pool_shape``. Everything else here is the kit's own machinery: it opens
backends with a config, registers a fresh host pool with each, and closes them at the end.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from hicache_core.memory.host_pool import LAYOUTS, HostKVPool
from hicache_core.memory.pages import supported_layouts
from hicache_core.plugins.factory import create_backend
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import LayoutError
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import PoolSnapshot, fill_buffer_randomly, fill_pages, read_page_bytes
from hicache_core.testing.verdicts import require_pages, require_v1_result, violated

OpenBackend = Callable[[HiCacheStorageConfig], HiCacheStorage]
Connected = tuple[HiCacheStorage, HostKVPool]
Connect = Callable[..., Connected]
Keys = Callable[[int], list[str]]

MHA_LAYOUTS: tuple[str, ...] = LAYOUTS
MLA_LAYOUTS: tuple[str, ...] = supported_layouts("mla")
#: Every (kind, layout) a host pool can have: ids such as ``mha-page_first``.
ALL_POOL_KINDS: list[Any] = [pytest.param(False, lo, id=f"mha-{lo}") for lo in MHA_LAYOUTS] + [
    pytest.param(True, lo, id=f"mla-{lo}") for lo in MLA_LAYOUTS
]

#: Seed of the bytes a destination page holds before a read (never a stored page's seed).
STALE_SEED = 7919

#: The kit's host pools: small (2 KiB pages), so the whole kit stays quick.
DEFAULT_POOL_SHAPE: dict[str, Any] = {
    "page_size": 16, "layer_num": 2, "head_num": 2, "head_dim": 8, "dtype": torch.bfloat16, "pages": 160,
}


class KitBase:
    """Fixtures and helpers; the checks live in the ``kit_*`` mixins."""

    backend_name: str | None = None

    # ------------------------------------------------------------------ fixtures to override
    @pytest.fixture
    def storage_config(self) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config={})

    @pytest.fixture
    def pool_shape(self) -> dict[str, Any]:
        return dict(DEFAULT_POOL_SHAPE)

    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        name = self.backend_name
        if name is None:
            pytest.fail("set backend_name on the test class or override the open_backend fixture")

        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend(name, config)

        return _open

    # ------------------------------------------------------------------ the kit's machinery
    @pytest.fixture
    def make_pool(self, pool_shape: dict[str, Any]) -> Callable[..., HostKVPool]:
        """``make_pool(layout, is_mla, **shape)``: a fresh host pool; ``shape`` overrides ``pool_shape``."""
        pool_seeds = iter(range(STALE_SEED + 1, 1 << 30))

        def _make(layout: str = "page_first", is_mla: bool = False, **shape: Any) -> HostKVPool:
            s = {**pool_shape, **shape}
            pool = HostKVPool(
                size=s["pages"] * s["page_size"], page_size=s["page_size"], layer_num=s["layer_num"],
                head_num=s["head_num"], head_dim=s["head_dim"], dtype=s["dtype"], layout=layout, is_mla=is_mla,
            )
            # Every page starts as random bytes, not zeros: a stray write of zeros (or of
            # anything) into a page the kit did not hand over shows as a change.
            fill_buffer_randomly(pool.kv_buffer, seed=next(pool_seeds))
            return pool

        return _make

    @pytest.fixture
    def opened(self) -> Iterator[list[HiCacheStorage]]:
        backends: list[HiCacheStorage] = []
        yield backends
        for b in backends:
            try:
                b.close()
            except Exception:
                pass

    @pytest.fixture
    def connect(
        self, open_backend: OpenBackend, opened: list[HiCacheStorage], storage_config: HiCacheStorageConfig,
        make_pool: Callable[..., HostKVPool],
    ) -> Connect:
        """``connect(layout, is_mla, pool=None, **config)``: open a backend, register a fresh pool.

        ``pool`` (a dict) overrides the pool shape; ``config`` overrides config fields.
        """

        def _connect(
            layout: str = "page_first", is_mla: bool = False, pool: dict[str, Any] | None = None, **overrides: Any
        ) -> Connected:
            config = replace(
                storage_config, is_mla_model=is_mla, is_page_first_layout=layout != "layer_first", **overrides
            )
            config.extra_config = dict(storage_config.extra_config or {})
            backend = open_backend(config)
            opened.append(backend)
            host = make_pool(layout, is_mla, **(pool or {}))
            backend.register_mem_pool_host(host)
            self.__dict__.setdefault("_kit_pools", {})[id(backend)] = host
            return backend, host

        return _connect

    @pytest.fixture
    def backend_and_pool(self, connect: Connect) -> Connected:
        return connect()

    @pytest.fixture
    def keys(self) -> Keys:
        """``keys(n)``: ``n`` fresh 64-character hex keys, unique to this run (a shared store is fine).

        The keys of one call share their first 18 and last 34 characters and are not in sorted
        order, so a backend that keys by a prefix or a suffix, or reorders a batch (sorting
        keys without their values), mixes pages up.
        """
        run = uuid.uuid4().hex[:12]
        counter = iter(range(1 << 30))

        def _keys(n: int) -> list[str]:
            base = next(counter)
            mixed = [hashlib.sha256(f"{run}{base}.{i}".encode()).hexdigest()[:6] for i in range(n)]
            return [f"{run}{base:06d}{mix}{i:06d}".ljust(64, "0") for i, mix in enumerate(mixed)]

        return _keys

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def connect_layout(connect: Connect, layout: str, is_mla: bool = False, **kw: Any) -> Connected:
        """``connect``, skipping (saying why) when the backend refuses the layout or MLA."""
        try:
            backend, pool = connect(layout, is_mla, **kw)
        except LayoutError as exc:
            pytest.skip(f"backend refuses {'an MLA' if is_mla else 'an MHA'} {layout} pool: {exc}")
        if is_mla and not backend.capabilities.mla:
            pytest.skip("backend declares no MLA support (capabilities.mla is False)")
        if backend.capabilities.requires_page_layout and layout == "layer_first":
            violated("declared layouts", "backend requires a page layout but accepted layer_first without LayoutError")
        return backend, pool

    @staticmethod
    def require_sharing(backend: HiCacheStorage, what: str) -> None:
        """Skip unless two instances of this backend see one store (persistent or shared)."""
        caps = backend.capabilities
        if not (caps.persistent or caps.shared):
            pytest.skip(f"{what} needs two backend instances on one store; this backend is neither "
                        "persistent nor shared (capabilities)")

    def pool_of(self, backend: HiCacheStorage) -> Any:
        """The host pool the kit registered with ``backend`` (not what the backend says it holds)."""
        return self.__dict__.get("_kit_pools", {}).get(id(backend), backend.mem_pool_host)

    def v1_set(
        self, prop: str, backend: HiCacheStorage, ks: list[str], idx: torch.Tensor, guard: bool = True
    ) -> list[bool]:
        """``batch_set_v1``, which must leave every page of the host pool as it was.

        ``guard=False`` skips that check (for threads that share one pool and write it).
        """
        pool = self.pool_of(backend)
        before = PoolSnapshot(pool) if pool is not None and guard else None
        stored = require_v1_result(prop, "batch_set_v1", backend.batch_set_v1(ks, idx), len(ks))
        if before is not None and (changed := before.changed_pages()):
            violated(prop, f"batch_set_v1 changed host pages {changed[:8]} of the pool it read from "
                           "(a write must leave the host pool as it was)")
        return stored

    def v1_get(
        self, prop: str, backend: HiCacheStorage, ks: list[str], idx: torch.Tensor, guard: bool = True
    ) -> list[bool]:
        """``batch_get_v1``, which may write only the host pages of the keys it reports hits."""
        pool = self.pool_of(backend)
        before = PoolSnapshot(pool) if pool is not None and guard else None
        got = require_v1_result(prop, "batch_get_v1", backend.batch_get_v1(ks, idx), len(ks))
        if pool is None or before is None:
            return got
        pages = pool.indices_to_pages(idx)
        if not before.changed_pages([p for p, hit in zip(pages, got) if hit]):
            return got
        changed = before.changed_pages()
        missed = [i for i, (p, hit) in enumerate(zip(pages, got)) if not hit and p in changed]
        if missed:
            violated(prop, f"batch_get_v1 missed pages {missed} but changed their host pages "
                           f"{[pages[i] for i in missed]} (a miss must leave its host page as it was)")
        outside = [p for p in changed if p not in pages]
        if outside:
            unwritten = [i for i, (p, hit) in enumerate(zip(pages, got)) if hit and p not in changed]
            where = (f"; pages {unwritten} it reported hits were not loaded into their host pages "
                     f"{[pages[i] for i in unwritten]} (host_indices of get ignored or offset)") if unwritten else ""
            violated(prop, f"batch_get_v1 changed host pages {outside[:8]} outside the host_indices it was "
                           f"given (a read may write only the requested pages){where}")
        return got

    def v1_store_all(
        self, prop: str, backend: HiCacheStorage, ks: list[str], idx: torch.Tensor, guard: bool = True
    ) -> None:
        """``batch_set_v1`` must store every page (a healthy backend with room does)."""
        stored = self.v1_set(prop, backend, ks, idx, guard)
        if not all(stored):
            violated(prop, f"batch_set_v1 stored {sum(stored)} of {len(ks)} pages on a healthy backend ({stored})")

    def v1_load_all(
        self, prop: str, backend: HiCacheStorage, pool: HostKVPool, ks: list[str], dest: torch.Tensor,
        expected: list[bytes], what: str = "batch_get_v1", others: dict[str, bytes] | None = None,
        guard: bool = True,
    ) -> None:
        """``batch_get_v1`` must hit every page (all reported stored) and load exactly ``expected``.

        ``dest``'s pages are first filled with other random bytes, so a read that reports a hit
        but writes nothing (or writes elsewhere) cannot pass by finding the bytes already there.
        """
        pages = pool.indices_to_pages(dest)
        stale = fill_pages(pool, pages, seed=STALE_SEED)
        got = self.v1_get(prop, backend, ks, dest, guard)
        if not all(got):
            missed = [i for i, g in enumerate(got) if not g]
            violated(prop, f"pages {missed} were reported stored but {what} missed them "
                           "(a page reported stored must be served)")
        read = read_page_bytes(pool, dest)
        for i, (have, old) in enumerate(zip(read, stale)):
            if have == old and have != expected[i]:
                violated(prop, f"{what} reported page {i} a hit but never wrote host page {pages[i]}: it still "
                               "holds the bytes it held before the read")
        require_pages(prop, read, expected, what, others)

    @staticmethod
    def alloc(pool: HostKVPool, n: int) -> torch.Tensor:
        idx = pool.alloc(n * pool.page_size)
        assert idx is not None, "host pool too small for the test"
        return idx
