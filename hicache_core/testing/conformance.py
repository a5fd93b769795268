"""``StorageConformanceTests``: the behaviour every hicache storage backend must show.

Modelled on zarr's ``StoreTests``: a backend author subclasses it and overrides fixtures.

Fixtures to override (all optional but one of the first two):

- ``backend_name`` (class attribute): an installed backend name; the default
  ``open_backend`` then uses ``hicache_core.create_backend``.
- ``open_backend``: a callable ``(config) -> HiCacheStorage`` that opens the backend with
  exactly that config, on the *same* underlying store every time it is called.
- ``storage_config``: the ``HiCacheStorageConfig`` (put backend keys in ``extra_config``).
- ``pool_shape``: the host pool's shape (``page_size``, ``layer_num``, ``head_num``,
  ``head_dim``, ``dtype``, ``pages``).

Tests that need a capability the backend does not declare are skipped, saying which one.
Keys are unique per test run so a shared store (a Mooncake cluster, a bucket) can be reused.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from hicache_core.memory.host_pool import LAYOUTS, HostKVPool
from hicache_core.plugins.factory import create_backend
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import fill_random_pages, random_page, read_page_bytes, tensor_bytes
from hicache_core.version import CONTRACT_VERSION, parse_contract_version

OpenBackend = Callable[[HiCacheStorageConfig], HiCacheStorage]


class StorageConformanceTests:
    """Subclass me; see the module docstring for the fixtures to override."""

    backend_name: str | None = None

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def storage_config(self) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config={})

    @pytest.fixture
    def pool_shape(self) -> dict[str, Any]:
        return {"page_size": 16, "layer_num": 2, "head_num": 2, "head_dim": 8, "dtype": torch.bfloat16, "pages": 160}

    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        name = self.backend_name
        if name is None:
            pytest.fail("set backend_name on the test class or override the open_backend fixture")

        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend(name, config)

        return _open

    @pytest.fixture
    def make_pool(self, pool_shape: dict[str, Any]) -> Callable[..., HostKVPool]:
        def _make(layout: str = "page_first", is_mla: bool = False) -> HostKVPool:
            s = pool_shape
            return HostKVPool(
                size=s["pages"] * s["page_size"], page_size=s["page_size"], layer_num=s["layer_num"],
                head_num=s["head_num"], head_dim=s["head_dim"], dtype=s["dtype"], layout=layout, is_mla=is_mla,
            )

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
    ) -> Callable[..., tuple[HiCacheStorage, HostKVPool]]:
        """Open a backend and register a fresh host pool with it."""

        def _connect(
            layout: str = "page_first", is_mla: bool = False, **overrides: Any
        ) -> tuple[HiCacheStorage, HostKVPool]:
            config = replace(
                storage_config, is_mla_model=is_mla, is_page_first_layout=layout != "layer_first", **overrides
            )
            backend = open_backend(config)
            opened.append(backend)
            pool = make_pool(layout, is_mla)
            backend.register_mem_pool_host(pool)
            return backend, pool

        return _connect

    @pytest.fixture
    def backend_and_pool(self, connect: Callable[..., tuple[HiCacheStorage, HostKVPool]]) -> tuple[HiCacheStorage, HostKVPool]:
        return connect()

    @pytest.fixture
    def keys(self) -> Callable[[int], list[str]]:
        run = uuid.uuid4().hex[:12]
        counter = iter(range(1 << 30))

        def _keys(n: int) -> list[str]:
            base = next(counter)
            return [f"{run}{base:06d}{i:06d}".ljust(64, "0") for i in range(n)]

        return _keys

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _fill(pool: HostKVPool, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
        return fill_random_pages(pool, n, seed)

    @staticmethod
    def _read(pool: HostKVPool, idx: torch.Tensor) -> list[bytes]:
        return read_page_bytes(pool, idx)

    # ------------------------------------------------------------------ contract
    def test_declares_contract_version(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool]) -> None:
        backend, _ = backend_and_pool
        major, _minor = parse_contract_version(getattr(backend, "contract_version", "1.0"))
        assert major == CONTRACT_VERSION[0]

    def test_miss(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, _ = backend_and_pool
        ks = keys(3)
        assert backend.exists(ks[0]) is False
        assert backend.get(ks[0]) is None
        assert backend.batch_exists(ks) == 0
        assert backend.exists_many(ks) == [False, False, False]

    def test_set_get_roundtrip(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        (key,) = keys(1)
        page = random_page(pool, 1)
        assert backend.set(key, page) is True
        assert backend.exists(key) is True
        got = backend.get(key, pool.get_dummy_flat_data_page())
        assert got is not None
        assert tensor_bytes(got) == tensor_bytes(page)

    def test_batch_set_get(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        ks = keys(8)
        pages = [random_page(pool, 10 + i) for i in range(8)]
        assert backend.batch_set(ks, pages) is True
        got = backend.batch_get(ks, [pool.get_dummy_flat_data_page() for _ in ks])
        assert isinstance(got, list) and len(got) == 8
        assert [tensor_bytes(g) for g in got if g is not None] == [tensor_bytes(p) for p in pages]

    def test_batch_exists_counts_leading_hits(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        ks = keys(6)
        for i in (0, 1, 2, 4):
            assert backend.set(ks[i], random_page(pool, 20 + i))
        assert backend.batch_exists(ks) == 3
        assert backend.exists_many(ks) == [True, True, True, False, True, False]

    def test_duplicate_set_keeps_a_whole_page(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        (key,) = keys(1)
        first, second = random_page(pool, 30), random_page(pool, 31)
        assert backend.set(key, first) is True
        assert backend.set(key, first) is True
        assert backend.set(key, second) is True
        got = backend.get(key, pool.get_dummy_flat_data_page())
        assert got is not None and tensor_bytes(got) in (tensor_bytes(first), tensor_bytes(second))

    def test_empty_batches(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool]) -> None:
        backend, _ = backend_and_pool
        none = torch.empty(0, dtype=torch.int64)
        assert backend.batch_get_v1([], none) == []
        assert backend.batch_set_v1([], none) == []
        assert backend.batch_exists([]) == 0
        assert backend.exists_many([]) == []
        assert backend.batch_get([]) == []

    # ------------------------------------------------------------------ zero-copy v1
    @pytest.mark.parametrize("layout", LAYOUTS)
    def test_v1_roundtrip(self, layout: str, connect: Callable[..., tuple[HiCacheStorage, HostKVPool]], keys: Callable[[int], list[str]]) -> None:
        backend, pool = self._connect_layout(connect, layout)
        ks = keys(8)
        idx, expected = self._fill(pool, 8, seed=40)
        result = backend.batch_set_v1(ks, idx)
        assert result == [True] * 8
        dest = pool.alloc(8 * pool.page_size)
        assert dest is not None
        got = backend.batch_get_v1(ks, dest)
        assert got == [True] * 8
        assert self._read(pool, dest) == expected

    def _connect_layout(self, connect: Callable[..., tuple[HiCacheStorage, HostKVPool]], layout: str, is_mla: bool = False) -> tuple[HiCacheStorage, HostKVPool]:
        from hicache_core.spec.errors import LayoutError

        try:
            backend, pool = connect(layout, is_mla)
        except LayoutError as exc:
            pytest.skip(f"backend refuses layout {layout}: {exc}")
        if backend.capabilities.requires_page_layout and layout == "layer_first":
            pytest.fail("backend requires a page layout but accepted layer_first without LayoutError")
        return backend, pool

    def test_v1_miss_returns_list_and_leaves_pool(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        ks = keys(4)
        idx, expected = self._fill(pool, 4, seed=50)
        got = backend.batch_get_v1(ks, idx)
        assert got == [False] * 4
        assert self._read(pool, idx) == expected

    def test_v1_partial_hits_are_per_page(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        ks = keys(4)
        idx, expected = self._fill(pool, 4, seed=60)
        page = pool.page_size
        assert backend.batch_set_v1([ks[0], ks[2]], torch.cat([idx[0:page], idx[2 * page : 3 * page]])) == [True, True]
        dest = pool.alloc(4 * page)
        assert dest is not None
        got = backend.batch_get_v1(ks, dest)
        assert got == [True, False, True, False]
        read = self._read(pool, dest)
        assert read[0] == expected[0] and read[2] == expected[2]

    def test_large_batch(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        n = min(128, pool.page_num // 2)
        ks = keys(n)
        idx, expected = self._fill(pool, n, seed=70)
        assert backend.batch_set_v1(ks, idx) == [True] * n
        assert backend.batch_exists(ks) == n
        dest = pool.alloc(n * pool.page_size)
        assert dest is not None
        assert backend.batch_get_v1(ks, dest) == [True] * n
        assert self._read(pool, dest) == expected

    def test_mla(self, connect: Callable[..., tuple[HiCacheStorage, HostKVPool]], keys: Callable[[int], list[str]], open_backend: OpenBackend) -> None:
        probe, _ = connect()
        if not probe.capabilities.mla:
            pytest.skip("backend declares no MLA support (capabilities.mla is False)")
        backend, pool = self._connect_layout(connect, "page_first", is_mla=True)
        ks = keys(4)
        idx, expected = self._fill(pool, 4, seed=80)
        assert backend.batch_set_v1(ks, idx) == [True] * 4
        dest = pool.alloc(4 * pool.page_size)
        assert dest is not None
        assert backend.batch_get_v1(ks, dest) == [True] * 4
        assert self._read(pool, dest) == expected

    def test_mla_ranks_share_one_copy(self, connect: Callable[..., tuple[HiCacheStorage, HostKVPool]], keys: Callable[[int], list[str]]) -> None:
        """MLA ranks hold the same KV: rank 0 writes, every rank reads rank 0's pages."""
        probe, _ = connect()
        caps = probe.capabilities
        if not caps.mla:
            pytest.skip("backend declares no MLA support (capabilities.mla is False)")
        if not (caps.persistent or caps.shared):
            pytest.skip("two backend instances share no pages (neither persistent nor shared)")
        writer, wpool = connect("page_first", True, tp_rank=0, tp_size=2)
        reader, rpool = connect("page_first", True, tp_rank=1, tp_size=2)
        ks = keys(3)
        idx, expected = self._fill(wpool, 3, seed=140)
        assert writer.batch_set_v1(ks, idx) == [True] * 3
        dest = rpool.alloc(3 * rpool.page_size)
        assert dest is not None
        assert reader.batch_get_v1(ks, dest) == [True] * 3
        assert self._read(rpool, dest) == expected

    # ------------------------------------------------------------------ concurrency
    def test_concurrent_threads(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        threads, per_thread = 4, 6
        shared = keys(2)
        shared_pages = [random_page(pool, 90 + i) for i in range(2)]
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                ks = keys(per_thread)
                idx, expected = self._fill(pool, per_thread, seed=1000 + t)
                for _ in range(3):
                    assert backend.batch_set_v1(ks, idx) == [True] * per_thread
                    for k, p in zip(shared, shared_pages):
                        assert backend.set(k, p)
                dest = pool.alloc(per_thread * pool.page_size)
                assert dest is not None
                assert backend.batch_get_v1(ks, dest) == [True] * per_thread
                assert self._read(pool, dest) == expected
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        assert not errors, errors[0]
        for k, p in zip(shared, shared_pages):
            got = backend.get(k, pool.get_dummy_flat_data_page())
            assert got is not None and tensor_bytes(got) == tensor_bytes(p)

    # ------------------------------------------------------------------ capabilities
    def test_persistent_across_reopen(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], connect: Callable[..., tuple[HiCacheStorage, HostKVPool]], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.persistent:
            pytest.skip("backend is not persistent (capabilities.persistent is False)")
        ks = keys(3)
        idx, expected = self._fill(pool, 3, seed=110)
        assert backend.batch_set_v1(ks, idx) == [True] * 3
        backend.close()
        again, pool2 = connect()
        assert again.batch_exists(ks) == 3
        dest = pool2.alloc(3 * pool2.page_size)
        assert dest is not None
        assert again.batch_get_v1(ks, dest) == [True] * 3
        assert self._read(pool2, dest) == expected

    def test_delete(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.delete:
            pytest.skip("backend does not support delete (capabilities.delete is False)")
        k1, k2 = keys(2)
        assert backend.set(k1, random_page(pool, 120)) and backend.set(k2, random_page(pool, 121))
        assert backend.delete(k1) is True
        assert backend.exists(k1) is False and backend.exists(k2) is True
        assert backend.delete(k1) is True  # deleting an absent page is not an error

    def test_clear(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool], keys: Callable[[int], list[str]]) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.clear:
            pytest.skip("backend does not support clear (capabilities.clear is False)")
        ks = keys(3)
        for i, k in enumerate(ks):
            assert backend.set(k, random_page(pool, 130 + i))
        backend.clear()
        assert backend.exists_many(ks) == [False] * 3

    def test_stats_and_health(self, backend_and_pool: tuple[HiCacheStorage, HostKVPool]) -> None:
        backend, _ = backend_and_pool
        stats = backend.get_stats()
        assert stats is None or isinstance(stats, dict)
        backend.health_check()
