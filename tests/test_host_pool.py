"""The host (L2) pool: shapes per layout, zero-copy page metadata, allocation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from hicache_core import HostKVPool, LayoutError
from hicache_core.memory.host_pool import LAYOUTS

PAGE, LAYERS, HEADS, DIM, PAGES = 4, 3, 2, 8, 6
CASES = [(layout, mla) for layout in LAYOUTS for mla in (False, True) if not (mla and layout == "page_head")]
IDS = [f"{layout}-{'mla' if mla else 'mha'}" for layout, mla in CASES]


def make(layout: str, mla: bool, dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    return HostKVPool(size=PAGES * PAGE, page_size=PAGE, layer_num=LAYERS, head_num=HEADS, head_dim=DIM,
                      dtype=dtype, layout=layout, is_mla=mla, pin_memory=False)


def owner_map(pool: HostKVPool) -> np.ndarray:
    """For every byte of the buffer, 1 + the page whose metadata piece covers it (0: none)."""
    base = pool.kv_buffer.data_ptr()
    total = pool.kv_buffer.numel() * pool.itemsize
    owner = np.zeros(total, dtype=np.int32)
    for page in range(pool.page_num):
        ptrs, sizes = pool.get_page_buffer_meta(pool.pages_to_indices([page]))
        assert len(ptrs) == len(sizes) == pool.pieces_per_page()
        assert sum(sizes) == pool.page_bytes
        for ptr, size in zip(ptrs, sizes):
            start = ptr - base
            assert 0 <= start and start + size <= total, "piece outside the buffer"
            assert not owner[start : start + size].any(), "two pieces overlap"
            owner[start : start + size] = page + 1
    return owner


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_meta_pieces_tile_the_buffer_exactly(layout: str, mla: bool) -> None:
    pool = make(layout, mla)
    owner = owner_map(pool)
    assert owner.all(), "some bytes of the buffer belong to no page"
    assert pool.page_bytes * pool.page_num == owner.size


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_meta_pieces_are_exactly_the_bytes_a_page_write_touches(layout: str, mla: bool) -> None:
    pool = make(layout, mla)
    owner = owner_map(pool)
    raw = pool.kv_buffer.view(-1).view(torch.uint8).numpy()
    for page in range(pool.page_num):
        pool.kv_buffer.zero_()
        pool.write_page(page, torch.full((pool.page_bytes // pool.itemsize,), 1.5, dtype=pool.dtype))
        touched = raw != 0
        assert np.array_equal(touched, owner == page + 1), f"page {page}: write and metadata disagree"


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_page_memoryviews_are_the_pieces_without_copy(layout: str, mla: bool) -> None:
    pool = make(layout, mla)
    page = 2
    views = pool.page_memoryviews(page)
    pieces = pool.page_pieces(page)
    assert [v.nbytes for v in views] == [p.nbytes for p in pieces]
    assert [np.frombuffer(v, dtype=np.uint8).ctypes.data for v in views] == [p.ptr for p in pieces]
    # SGLang's get_page_buffer_meta names the same pieces (layer_first MHA: layer by layer, K then V).
    ptrs, _ = pool.get_page_buffer_meta(pool.pages_to_indices([page]))
    assert sorted(ptrs) == sorted(p.ptr for p in pieces)
    # The pieces, read in order, are the flat page: every path stores the same bytes.
    assert b"".join(bytes(v) for v in views) == pool.read_page(page).view(torch.uint8).numpy().tobytes()
    for v in views:
        v[:] = b"\x7f" * v.nbytes  # through the view, into the pool
    flat = pool.read_page(page).view(torch.uint8)
    assert bool((flat == 0x7F).all())
    assert bool((pool.read_page(1).view(torch.uint8) == 0).all()), "a neighbouring page changed"


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_shapes_and_sizes(layout: str, mla: bool) -> None:
    pool = make(layout, mla, dtype=torch.float16)
    heads = 1 if mla else HEADS
    per_token = LAYERS * heads * DIM * 2 * (1 if mla else 2)
    assert pool.get_size_per_token() == per_token and pool.page_bytes == per_token * PAGE
    assert pool.kv_buffer.numel() * 2 == per_token * PAGES * PAGE
    expected = {
        ("layer_first", False): (2, LAYERS, PAGES * PAGE, HEADS, DIM),
        ("page_first", False): (2, PAGES * PAGE, LAYERS, HEADS, DIM),
        ("page_first_direct", False): (2, PAGES, LAYERS, PAGE, HEADS, DIM),
        ("page_head", False): (2, PAGES, HEADS, PAGE, LAYERS, DIM),
        ("layer_first", True): (LAYERS, PAGES * PAGE, 1, DIM),
        ("page_first", True): (PAGES * PAGE, LAYERS, 1, DIM),
        ("page_first_direct", True): (PAGES, LAYERS, PAGE, 1, DIM),
    }[(layout, mla)]
    assert tuple(pool.kv_buffer.shape) == expected
    assert pool.is_page_first_layout == (layout != "layer_first")


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_flat_page_round_trip(layout: str, mla: bool) -> None:
    pool = make(layout, mla, dtype=torch.float32)
    data = torch.arange(pool.page_bytes // 4, dtype=torch.float32)
    pool.set_from_flat_data_page(3 * PAGE, data)
    assert torch.equal(pool.get_data_page(3 * PAGE, flat=True), data)
    assert torch.equal(pool.read_page(3), data)
    dummy = pool.get_dummy_flat_data_page()
    assert dummy.numel() == data.numel() and not bool(dummy.any())
    with pytest.raises(ValueError, match="bytes"):
        pool.set_from_flat_data_page(0, data[:-1])


def test_alloc_and_free() -> None:
    pool = make("page_first", False)
    assert pool.available_size() == PAGES * PAGE
    a = pool.alloc(2 * PAGE)
    assert a is not None and a.dtype == torch.int64 and a.numel() == 2 * PAGE
    assert bool((a[::PAGE] % PAGE == 0).all()), "page aligned"
    assert pool.available_size() == (PAGES - 2) * PAGE
    assert pool.alloc((PAGES - 1) * PAGE) is None, "too few pages"
    assert pool.available_size() == (PAGES - 2) * PAGE, "a refused alloc takes nothing"
    b = pool.alloc((PAGES - 2) * PAGE)
    assert b is not None
    assert set(pool.indices_to_pages(a)).isdisjoint(pool.indices_to_pages(b))
    assert pool.free(a) == 2 * PAGE and pool.available_size() == 2 * PAGE
    with pytest.raises(ValueError, match="multiple of page_size"):
        pool.alloc(PAGE + 1)


def test_index_page_conversions() -> None:
    pool = make("page_first", False)
    idx = pool.pages_to_indices([5, 0, 2])
    assert idx.tolist()[:PAGE] == [20, 21, 22, 23]
    assert pool.indices_to_pages(idx) == [5, 0, 2]
    with pytest.raises(ValueError, match="not page aligned"):
        pool.indices_to_pages(torch.arange(1, PAGE + 1))
    with pytest.raises(ValueError, match="whole number of pages"):
        pool.indices_to_pages(torch.arange(PAGE + 1))


@pytest.mark.parametrize(("layout", "mla"), CASES, ids=IDS)
def test_indices_outside_the_pool_are_refused(layout: str, mla: bool) -> None:
    """Pointers of such a page would lie outside kv_buffer; freed, alloc would hand it out."""
    pool = make(layout, mla)
    for bad in (torch.arange(PAGES * PAGE, (PAGES + 1) * PAGE), torch.arange(-PAGE, 0)):
        with pytest.raises(ValueError, match="outside this pool"):
            pool.get_page_buffer_meta(bad)
        with pytest.raises(ValueError, match="outside this pool"):
            pool.free(bad)
    with pytest.raises(ValueError, match="outside this pool"):
        pool.page_pieces(PAGES)
    assert pool.available_size() == PAGES * PAGE


def test_a_page_freed_twice_is_refused_and_never_handed_out_twice() -> None:
    pool = make("page_first", False)
    a = pool.alloc(2 * PAGE)
    assert a is not None
    pool.free(a[:PAGE])
    with pytest.raises(ValueError, match="freed twice"):
        pool.free(a)  # its first page is free already
    with pytest.raises(ValueError, match="freed twice"):
        pool.free(torch.cat([a[PAGE:], a[PAGE:]]))  # the same page twice in one call
    assert pool.available_size() == (PAGES - 1) * PAGE, "a refused free frees nothing"
    pool.free(a[PAGE:])
    everything = pool.alloc(PAGES * PAGE)
    assert everything is not None and len(set(pool.indices_to_pages(everything))) == PAGES


def test_alloc_is_thread_safe() -> None:
    pool = HostKVPool(size=400 * 2, page_size=2, layer_num=1, head_num=1, head_dim=2, dtype=torch.float32)
    got: list[list[int]] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        for _ in range(50):
            idx = pool.alloc(2)
            assert idx is not None
            mine += pool.indices_to_pages(idx)
        with lock:
            got.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pages = [p for mine in got for p in mine]
    assert len(pages) == len(set(pages)) == 400 and pool.available_size() == 0


def test_bad_construction_and_layout_requirement() -> None:
    with pytest.raises(LayoutError, match="page_first"):
        HostKVPool(size=8, page_size=4, layer_num=1, head_num=1, head_dim=4, layout="weird")
    with pytest.raises(ValueError, match="multiple of page_size"):
        HostKVPool(size=10, page_size=4, layer_num=1, head_num=1, head_dim=4)
    with pytest.raises(ValueError, match="positive"):
        HostKVPool(size=8, page_size=4, layer_num=0, head_num=1, head_dim=4)
    with pytest.raises(LayoutError, match="--hicache-mem-layout page_first"):
        make("layer_first", False).require_page_layout("mooncake")
    make("page_first_direct", True).require_page_layout("mooncake")


@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct", "page_head"])
def test_k_and_v_are_separate_pieces_even_in_a_one_page_pool(layout: str) -> None:
    # A one-page pool lays K and V back to back; stores that keep K and V as two objects
    # (Mooncake) still get two pieces, the first half K and the second V.
    pool = HostKVPool(PAGE, PAGE, LAYERS, HEADS, DIM, layout=layout, pin_memory=False)
    pieces = pool.page_pieces(0)
    assert len(pieces) % 2 == 0
    half = pool.page_bytes // 2
    assert sum(p.nbytes for p in pieces[: len(pieces) // 2]) == half
    assert pieces[len(pieces) // 2].ptr - pool.kv_buffer.data_ptr() == half
