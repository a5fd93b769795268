"""One meaning per stored page: whichever path or layout wrote a page, a reader gets the same KV.

- A page written by zero-copy ``batch_set_v1`` reads back through the tensor path
  (``batch_get`` into ``get_dummy_flat_data_page()`` targets, as SGLang's controller does)
  byte-equal, and the reverse (``batch_set`` of ``get_data_page`` values, then ``batch_get_v1``).
- A page written from a pool of one layout, read into a pool of another layout, is a miss or
  the same logical KV, compared per (kv, layer, token, head, dim) element: never other KV.
"""

from __future__ import annotations

import pytest
import torch

from hicache_core.spec.errors import LayoutError
from hicache_core.testing.kit_base import ALL_POOL_KINDS, MHA_LAYOUTS, MLA_LAYOUTS, Connect, Keys, KitBase
from hicache_core.testing.pages import (
    fill_pages,
    logical_bytes,
    read_page_bytes,
    scattered_alloc,
    tensor_bytes,
)
from hicache_core.testing.verdicts import describe_mismatch, violated


def _kind(is_mla: bool) -> str:
    return "MLA" if is_mla else "MHA"


class PathChecks(KitBase):
    @pytest.mark.parametrize(("is_mla", "layout"), ALL_POOL_KINDS)
    def test_v1_write_tensor_read(self, is_mla: bool, layout: str, connect: Connect, keys: Keys) -> None:
        backend, pool = self.connect_layout(connect, layout, is_mla)
        prop = f"one page, every path: written by batch_set_v1, read by batch_get ({_kind(is_mla)} {layout})"
        n = 4
        src = scattered_alloc(pool, n, seed=200)
        expected = fill_pages(pool, pool.indices_to_pages(src), seed=201)
        ks = keys(n)
        self.v1_store_all(prop, backend, ks, src)
        got = backend.batch_get(ks, [pool.get_dummy_flat_data_page() for _ in ks])
        if not isinstance(got, list) or len(got) != n:
            violated(prop, f"batch_get must return one entry per key, got {type(got).__name__}")
        for i, value in enumerate(got):
            if not isinstance(value, torch.Tensor):
                violated(prop, f"batch_get missed page {i}, which batch_set_v1 reported stored")
            have = tensor_bytes(value)
            if have != expected[i]:
                violated(prop, f"batch_get of page {i} returned a page that {describe_mismatch(have, expected[i])} "
                               "(the two paths store different bytes under one key)")

    @pytest.mark.parametrize(("is_mla", "layout"), ALL_POOL_KINDS)
    def test_tensor_write_v1_read(self, is_mla: bool, layout: str, connect: Connect, keys: Keys) -> None:
        backend, pool = self.connect_layout(connect, layout, is_mla)
        prop = f"one page, every path: written by batch_set, read by batch_get_v1 ({_kind(is_mla)} {layout})"
        n = 4
        src = scattered_alloc(pool, n, seed=210)
        src_pages = pool.indices_to_pages(src)
        expected = fill_pages(pool, src_pages, seed=211)
        ks = keys(n)
        values = [pool.get_data_page(p * pool.page_size, flat=True) for p in src_pages]
        if backend.batch_set(ks, values) is not True:
            violated(prop, f"batch_set of {n} pages on a healthy backend did not return True")
        reused = fill_pages(pool, src_pages, seed=213)  # host pages are reused once a write returns
        dest = scattered_alloc(pool, n, seed=212)
        got = self.v1_get(prop, backend, ks, dest)
        if not all(got):
            violated(prop, f"batch_get_v1 missed pages {[i for i, g in enumerate(got) if not g]}, "
                           "which batch_set reported stored")
        for i, have in enumerate(read_page_bytes(pool, dest)):
            if have == reused[i]:
                violated(prop, f"batch_get_v1 of page {i} loaded what its host page held after batch_set returned "
                               "(the backend kept the tensor it was given, not a copy)")
            if have != expected[i]:
                violated(prop, f"batch_get_v1 of page {i} loaded a page that "
                               f"{describe_mismatch(have, expected[i])} (the two paths store different bytes "
                               "under one key)")

    @pytest.mark.parametrize(("is_mla", "layout"), ALL_POOL_KINDS)
    def test_layouts_read_each_other(self, is_mla: bool, layout: str, connect: Connect, keys: Keys) -> None:
        """Written from a ``layout`` pool, read into a pool of each other layout: the same KV or a miss."""
        writer, wpool = self.connect_layout(connect, layout, is_mla)
        self.require_sharing(writer, "reading another layout's pages")
        n = 3
        src = scattered_alloc(wpool, n, seed=220)
        src_pages = wpool.indices_to_pages(src)
        fill_pages(wpool, src_pages, seed=221)
        ks = keys(n)
        self.v1_store_all(f"cross-layout reads ({layout} writer)", writer, ks, src)
        want = [logical_bytes(wpool, p) for p in src_pages]
        for other in MLA_LAYOUTS if is_mla else MHA_LAYOUTS:
            if other == layout:
                continue
            prop = (f"cross-layout reads: a page written from a {layout} pool, read into a {other} pool "
                    f"({_kind(is_mla)}), must be the same KV or a miss")
            try:
                reader, rpool = connect(other, is_mla)
            except LayoutError:  # this backend never reads into such a pool
                continue
            dest = scattered_alloc(rpool, n, seed=222)
            got = self.v1_get(prop, reader, ks, dest)
            for i, (hit, page) in enumerate(zip(got, rpool.indices_to_pages(dest))):
                have = logical_bytes(rpool, page)
                if hit and have != want[i]:
                    violated(prop, f"page {i} was served as a hit holding other KV: read as (kv, layer, "
                                   f"token, head, dim) values it {describe_mismatch(have, want[i])}")
