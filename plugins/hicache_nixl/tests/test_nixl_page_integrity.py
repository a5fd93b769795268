"""One meaning per stored page, for NIXL's POSIX and OBJ plugins (issue 13).

Every path stores the core's flat page (``hicache_core.memory.pages``): a page written through
zero-copy v1 reads back byte-equal through the flat-tensor ``get``/``batch_get`` and the
reverse, in ``layer_first`` (K of every layer, then V) and ``page_first``; the bytes in the
file or object are exactly the flat page. A page written from a pool of another dtype, byte
order or TP rank lies in another namespace: a miss, and the reader's page is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)
import torch
from nixl_helpers import S3Server, fill, make_pool, open_nixl, page_bytes, read_pages

from hicache_core.memory.pages import read_flat_page
from hicache_core.spec.storage import HiCacheStorage

LAYOUTS = ["layer_first", "page_first"]
Extra = Callable[[], dict[str, Any]]


@pytest.fixture(params=["POSIX", "OBJ"])
def extra(request: pytest.FixtureRequest, tmp_path: Path) -> Extra:
    """The extra config of one store (the same store every call)."""
    if request.param == "POSIX":
        return lambda: {"plugin": "POSIX", "storage_dir": str(tmp_path / "pages")}
    s3: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("bucket")
    return lambda: s3.obj_config(bucket)


def _stored_bytes(store: HiCacheStorage, key: str, extra: dict[str, Any]) -> bytes:
    """The raw bytes the store holds for ``key``, read past NIXL (file or S3 object)."""
    skey = store.page_key(key)
    if extra["plugin"] == "OBJ":
        s3 = S3Server(extra["endpoint"], 0).client()
        body: bytes = s3.get_object(Bucket=extra["bucket"], Key=skey)["Body"].read()
        return body
    return Path(store.files.path(skey)).read_bytes()  # type: ignore[attr-defined]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_v1_write_reads_back_through_the_tensor_path(extra: Extra, layout: str) -> None:
    pool = make_pool(layout=layout, layer_num=3)
    store = open_nixl(extra(), pool)
    idx, expected = fill(pool, 3, seed=1)
    keys = ["v1a", "v1b", "v1c"]
    assert store.batch_set_v1(keys, idx) == [True] * 3
    # The bytes at rest are the flat page (layer_first: K of all layers, then V).
    assert [_stored_bytes(store, k, extra()) for k in keys] == expected
    got = store.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert [page_bytes_of(t) for t in got] == expected
    one = store.get(keys[1])  # no target: a page-sized tensor of the pool's dtype
    assert one is not None and one.dtype == pool.dtype and page_bytes_of(one) == expected[1]
    store.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_write_reads_back_through_v1(extra: Extra, layout: str) -> None:
    pool = make_pool(layout=layout, layer_num=3)
    store = open_nixl(extra(), pool)
    src, expected = fill(pool, 3, seed=2)
    flat = [read_flat_page(pool, p) for p in pool.indices_to_pages(src)]
    assert store.set("t0", flat[0]) is True
    assert store.batch_set(["t1", "t2"], flat[1:]) is True
    assert [_stored_bytes(store, k, extra()) for k in ("t0", "t1", "t2")] == expected
    dest = pool.alloc(3 * pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(["t0", "t1", "t2"], dest) == [True] * 3
    assert read_pages(pool, dest) == expected
    store.close()


def page_bytes_of(t: torch.Tensor | None) -> bytes | None:
    return None if t is None else bytes(t.contiguous().view(-1).view(torch.uint8).numpy())


@pytest.mark.parametrize(
    ("other_pool", "other_config"),
    [
        ({"layout": "page_first", "dtype": torch.float16}, {}),  # same size, other dtype
        ({"layout": "layer_first"}, {}),  # same size, other byte order
        ({"layout": "page_first"}, {"tp_rank": 1, "tp_size": 2}),  # another TP shard
        ({"layout": "page_first"}, {"model_name": "other-model"}),
    ],
    ids=["dtype", "layout", "tp_rank", "model"],
)
def test_a_page_of_an_incompatible_pool_is_a_miss(extra: Extra, other_pool: dict[str, Any],
                                                  other_config: dict[str, Any]) -> None:
    writer_pool = make_pool(layout="page_first")
    writer = open_nixl(extra(), writer_pool)
    idx, _ = fill(writer_pool, 2, seed=3)
    assert writer.batch_set_v1(["x0", "x1"], idx) == [True, True]
    assert writer.exists_many(["x0", "x1"]) == [True, True]

    pool = make_pool(**other_pool)
    reader = open_nixl(extra(), pool, **other_config)
    assert reader.page_bytes == writer.page_bytes  # a size check alone could not tell them apart
    dest, before = fill(pool, 2, seed=4)
    assert reader.exists_many(["x0", "x1"]) == [False, False]
    assert reader.batch_exists(["x0", "x1"]) == 0
    assert reader.batch_get_v1(["x0", "x1"], dest) == [False, False]
    assert read_pages(pool, dest) == before  # a miss leaves the page alone
    assert reader.get("x0", pool.get_dummy_flat_data_page()) is None
    writer.close()
    reader.close()


def test_page_bytes_helper_is_the_flat_page() -> None:
    pool = make_pool(layout="layer_first", layer_num=3)
    idx, expected = fill(pool, 1, seed=5)
    (page,) = pool.indices_to_pages(idx)
    assert page_bytes(pool, page) == expected[0]
    assert expected[0] == bytes(read_flat_page(pool, page).view(torch.uint8).numpy())
