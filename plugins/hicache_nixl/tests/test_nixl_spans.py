"""The vectorised page geometry against the host pool's own ``page_pieces``, for every layout."""

from __future__ import annotations

import pytest
from hicache_nixl.spans import PageSpans, PoolGeometry
from nixl_helpers import make_pool

from hicache_core.memory.host_pool import LAYOUTS


@pytest.mark.parametrize("is_mla", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_geometry_matches_page_pieces(layout: str, is_mla: bool) -> None:
    pool = make_pool(pages=12, layout=layout, is_mla=is_mla, layer_num=3)
    geometry = PoolGeometry(pool)
    assert geometry.linear
    pages = [11, 0, 5, 7]
    spans = geometry.spans(pages)
    for row, page in enumerate(pages):
        pieces = pool.page_pieces(page)
        assert spans.ptr[row].tolist() == [p.ptr for p in pieces]
        assert spans.size[row].tolist() == [p.nbytes for p in pieces]
    assert spans.lengths() == [pool.page_bytes] * len(pages)


def test_rows_lay_pieces_end_to_end_in_the_page() -> None:
    spans = PageSpans.contiguous([1000, 5000], [16, 32]).take([1])
    assert spans.local_rows().tolist() == [[5000, 32, 0]]
    pool = make_pool(pages=4)
    two = PoolGeometry(pool).spans([2, 3])
    remote = two.remote_rows([7, 9]).tolist()
    piece = pool.page_bytes // 2
    assert remote == [[0, piece, 7], [piece, piece, 7], [0, piece, 9], [piece, piece, 9]]
