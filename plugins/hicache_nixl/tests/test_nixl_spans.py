"""NIXL descriptor rows built from the core's page geometry, for every layout."""

from __future__ import annotations

import ctypes

import pytest
from hicache_nixl.spans import PageSpans
from nixl_helpers import fill, make_pool, page_bytes

from hicache_core.memory.host_pool import LAYOUTS
from hicache_core.memory.pages import page_geometry


@pytest.mark.parametrize("is_mla", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_spans_read_end_to_end_are_the_flat_page(layout: str, is_mla: bool) -> None:
    if is_mla and layout == "page_head":
        pytest.skip("page_head is MHA only")
    pool = make_pool(pages=12, layout=layout, is_mla=is_mla, layer_num=3)
    fill(pool, 12, seed=1)
    pages = [11, 0, 5, 7]
    spans = PageSpans.of_pool_pages(page_geometry(pool), pages)
    assert spans.lengths() == [page_geometry(pool).page_bytes] * len(pages)
    for row, page in enumerate(pages):
        got = b"".join(ctypes.string_at(int(p), int(n)) for p, n in zip(spans.ptr[row], spans.size[row]))
        assert got == page_bytes(pool, page)


def test_rows_lay_pieces_end_to_end_in_the_page() -> None:
    spans = PageSpans.contiguous([1000, 5000], [16, 32]).take([1])
    assert spans.local_rows().tolist() == [[5000, 32, 0]]
    pool = make_pool(pages=4)
    two = PageSpans.of_pool_pages(page_geometry(pool), [2, 3])
    remote = two.remote_rows([7, 9]).tolist()
    piece = page_geometry(pool).page_bytes // 2
    assert remote == [[0, piece, 7], [piece, piece, 7], [0, piece, 9], [piece, piece, 9]]
