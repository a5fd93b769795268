"""Checks of the zero-copy v1 path (``batch_set_v1`` / ``batch_get_v1``) in every pool layout."""

from __future__ import annotations

import pytest

from hicache_core.memory.host_pool import HostKVPool
from hicache_core.memory.pages import read_flat_page
from hicache_core.testing.kit_base import (
    ALL_POOL_KINDS,
    MHA_LAYOUTS,
    MLA_LAYOUTS,
    Connect,
    Connected,
    Keys,
    KitBase,
)
from hicache_core.testing.kit_reads import require_target_read, staged_target
from hicache_core.testing.pages import (
    fill_pages,
    fill_random_pages,
    page_nbytes,
    read_page_bytes,
    scattered_alloc,
    tensor_bytes,
)
from hicache_core.testing.verdicts import describe_mismatch, violated


def pages_holding(pool: HostKVPool, data: bytes) -> list[int]:
    """The host pages of ``pool`` whose stored bytes are ``data``."""
    return [p for p in range(pool.page_num) if tensor_bytes(read_flat_page(pool, p)) == data]


#: A pool whose pages are 1 MiB (MHA bf16: 2 x 4 layers x 64 tokens x 8 heads x 128 dims x 2
#: bytes), as a real model's are, where the kit's usual pages are 2 KiB: a backend that
#: cuts, chunks or slots pages at some size in between fails here. 8 pages: the check uses 4,
#: and leaves room for a backend (or adapter) that stages pages through the pool.
BIG_PAGE_POOL: dict[str, object] = {"page_size": 64, "layer_num": 4, "head_num": 8, "head_dim": 128, "pages": 8}


class ZeroCopyChecks(KitBase):
    @pytest.mark.parametrize("layout", MHA_LAYOUTS)
    def test_v1_roundtrip(self, layout: str, connect: Connect, keys: Keys) -> None:
        backend, pool = self.connect_layout(connect, layout)
        prop = f"v1 round trip ({layout})"
        ks = keys(8)
        idx, expected = fill_random_pages(pool, 8, seed=40)
        self.v1_store_all(prop, backend, ks, idx)
        # The engine reuses host pages once a write returns: the stored pages must not follow.
        reused = fill_pages(pool, pool.indices_to_pages(idx), seed=41)
        later = {f"what host page {p} held after batch_set_v1 returned (the backend kept a view of the host "
                 "page, not a copy)": data for p, data in zip(pool.indices_to_pages(idx), reused)}
        dest = self.alloc(pool, 8)
        self.v1_load_all(prop, backend, pool, ks, dest, expected, others=later)

    def test_big_pages(self, connect: Connect, keys: Keys) -> None:
        backend, pool = connect(pool=dict(BIG_PAGE_POOL))
        prop = f"pages of {page_nbytes(pool) >> 10} KiB"
        ks = keys(2)
        idx, expected = fill_random_pages(pool, 2, seed=45)
        self.v1_store_all(prop, backend, ks, idx)
        self.v1_load_all(prop, backend, pool, ks, self.alloc(pool, 2), expected, "batch_get_v1 of 1 MiB pages")
        targets = [staged_target(pool, i) for i in range(2)]
        got = backend.batch_get(ks, targets)
        if not isinstance(got, list) or len(got) != 2:
            violated(prop, f"batch_get() must return one entry per key, got {type(got).__name__}")
        for i, value in enumerate(got):
            if value is None:
                violated(prop, f"batch_get() missed 1 MiB page {i}, which batch_set_v1 reported stored")
            require_target_read(prop, value, targets[i], expected[i], f"batch_get() of 1 MiB page {i}")

    def test_v1_miss_returns_list_and_leaves_pool(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "v1 miss"
        ks = keys(4)
        idx, expected = fill_random_pages(pool, 4, seed=50)
        got = self.v1_get(prop, backend, ks, idx)
        if got != [False] * 4:
            violated(prop, f"batch_get_v1 of keys never written must be all False, got {got}")
        if read_page_bytes(pool, idx) != expected:
            violated(prop, "batch_get_v1 of keys never written changed the host pages it was given")

    def test_v1_partial_hits_are_per_page(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "v1 per-page results"
        ks = keys(4)
        idx, expected = fill_random_pages(pool, 4, seed=60)
        page = pool.page_size
        self.v1_store_all(prop, backend, [ks[0], ks[2]], idx[: 3 * page].reshape(3, page)[[0, 2]].flatten())
        dest = self.alloc(pool, 4)
        got = self.v1_get(prop, backend, ks, dest)
        if got != [True, False, True, False]:
            violated(prop, f"pages 0 and 2 of 4 stored: batch_get_v1 must give [True, False, True, False], got {got}")
        read = read_page_bytes(pool, dest)
        for i in (0, 2):
            if read[i] != expected[i]:
                violated(prop, f"page {i} read back {describe_mismatch(read[i], expected[i])}")

    def test_large_batch(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "large v1 batch"
        n = min(128, pool.page_num // 2)
        ks = keys(n)
        idx, expected = fill_random_pages(pool, n, seed=70)
        self.v1_store_all(prop, backend, ks, idx)
        if (count := backend.batch_exists(ks)) != n:
            violated(prop, f"batch_exists counts {count} of {n} pages batch_set_v1 stored")
        dest = self.alloc(pool, n)
        self.v1_load_all(prop, backend, pool, ks, dest, expected)

    @pytest.mark.parametrize("layout", MLA_LAYOUTS)
    def test_mla(self, layout: str, connect: Connect, keys: Keys) -> None:
        backend, pool = self.connect_layout(connect, layout, is_mla=True)
        prop = f"MLA v1 round trip ({layout})"
        ks = keys(4)
        idx, expected = fill_random_pages(pool, 4, seed=80)
        self.v1_store_all(prop, backend, ks, idx)
        dest = self.alloc(pool, 4)
        self.v1_load_all(prop, backend, pool, ks, dest, expected)

    def test_mla_ranks_share_one_copy(self, connect: Connect, keys: Keys) -> None:
        """MLA ranks hold the same KV: rank 0 writes, every rank reads rank 0's pages."""
        writer, wpool = self.connect_layout(connect, "page_first", True, tp_rank=0, tp_size=2)
        self.require_sharing(writer, "MLA ranks sharing pages")
        reader, rpool = connect("page_first", True, tp_rank=1, tp_size=2)
        prop = "MLA ranks share one copy"
        ks = keys(3)
        idx, expected = fill_random_pages(wpool, 3, seed=140)
        self.v1_store_all(prop, writer, ks, idx)
        dest = self.alloc(rpool, 3)
        self.v1_load_all(prop, reader, rpool, ks, dest, expected, "batch_get_v1 of MLA tp_rank 1")

    @pytest.mark.parametrize(("is_mla", "layout"), ALL_POOL_KINDS)
    def test_v1_scattered_host_indices(self, is_mla: bool, layout: str, connect: Connect, keys: Keys) -> None:
        """Pages at scattered, out-of-order host indices (as a running engine's pool hands out)."""
        backend, pool = self.connect_layout(connect, layout, is_mla)
        prop = f"v1 with scattered host indices ({'MLA' if is_mla else 'MHA'} {layout})"
        n = 6
        decoys = self.alloc(pool, n)  # pages 0..n-1 of the pool: random bytes that are never stored
        fill_pages(pool, pool.indices_to_pages(decoys), seed=150)
        src = scattered_alloc(pool, n, seed=151)
        src_pages = pool.indices_to_pages(src)
        expected = fill_pages(pool, src_pages, seed=152)
        ks = keys(n)
        self.v1_store_all(prop, backend, ks, src)
        dest = scattered_alloc(pool, n, seed=153)
        dest_pages = pool.indices_to_pages(dest)
        stale = fill_pages(pool, dest_pages, seed=154)
        got = self.v1_get(prop, backend, ks, dest)
        if not all(got):
            violated(prop, f"pages {[i for i, g in enumerate(got) if not g]} were reported stored but "
                           "batch_get_v1 missed them (a page reported stored must be served)")
        known = {f"host page {p}": tensor_bytes(read_flat_page(pool, p)) for p in range(pool.page_num)}
        for i, (page, want) in enumerate(zip(dest_pages, expected)):
            have = tensor_bytes(read_flat_page(pool, page))
            if have == want:
                continue
            if have == stale[i]:
                where = [p for p in pages_holding(pool, want) if p != src_pages[i]]
                landed = f"; it was loaded into host page(s) {where} instead" if where else ""
                violated(prop, f"page {i} was not loaded into host page {page} (host_indices of get "
                               f"ignored or offset){landed}")
            others = {name: data for name, data in known.items() if name != f"host page {page}"}
            written_from = f"written from host page {src_pages[i]}"
            violated(prop, f"page {i} ({written_from}) read back into host page {page} "
                           f"{describe_mismatch(have, want, others)}")
