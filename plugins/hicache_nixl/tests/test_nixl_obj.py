"""The OBJ flavour against a real S3 server (moto on 127.0.0.1), checked with a plain S3 client."""

from __future__ import annotations

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)
from nixl_helpers import (
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    assert_round_trip,
    fill,
    free_port,
    make_pool,
    open_nixl,
    read_pages,
)

from hicache_core.spec.errors import HiCacheError


def test_pages_are_objects_named_by_key(s3_server: S3Server, bucket: str) -> None:
    pool = make_pool()
    store = open_nixl(s3_server.obj_config(bucket, object_prefix="kv/"), pool)
    idx, expected = fill(pool, 3, seed=1)
    assert store.batch_set_v1(["p0", "p1", "p2"], idx) == [True] * 3
    s3 = s3_server.client()
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == [f"kv/{store.page_key(f'p{i}')}" for i in range(3)]
    bodies = [s3.get_object(Bucket=bucket, Key=f"kv/{store.page_key(f'p{i}')}")["Body"].read() for i in range(3)]
    assert bodies == expected  # one whole page per object: K piece then V piece
    store.close()


def test_an_object_put_by_a_plain_client_is_read_into_the_pool(s3_server: S3Server, bucket: str) -> None:
    pool = make_pool()
    store = open_nixl(s3_server.obj_config(bucket), pool)
    _, expected = fill(pool, 1, seed=2)
    s3_server.client().put_object(Bucket=bucket, Key=store.page_key("foreign"), Body=expected[0])
    assert store.exists("foreign") is True
    dest = pool.alloc(pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(["foreign"], dest) == [True]
    assert read_pages(pool, dest) == expected
    store.close()


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_multi_piece_pages_are_gathered_in_chunks(s3_server: S3Server, bucket: str, layout: str) -> None:
    pool = make_pool(layout=layout)
    store = open_nixl(s3_server.obj_config(bucket, staging_pages=3), pool)
    assert_round_trip(store, pool, 10, seed=3, prefix="g")
    store.close()


def test_exists_asks_without_reading(s3_server: S3Server, bucket: str) -> None:
    pool = make_pool()
    store = open_nixl(s3_server.obj_config(bucket), pool)
    idx, _ = fill(pool, 2, seed=4)
    assert store.batch_set_v1(["x0", "x2"], idx) == [True, True]
    assert store.exists_many(["x0", "x1", "x2"]) == [True, False, True]
    assert store.batch_exists(["x0", "x1", "x2"]) == 1
    stats = store.get_stats()
    assert stats["get_pages"] == 0 and stats["bytes_read"] == 0
    store.close()


def test_a_timeout_is_a_counted_per_page_failure(s3_server: S3Server, bucket: str) -> None:
    pool = make_pool()
    store = open_nixl(s3_server.obj_config(bucket, transfer_timeout_s=1e-6), pool)
    idx, _ = fill(pool, 4, seed=5)
    result = store.batch_set_v1([f"t{i}" for i in range(4)], idx)
    assert result == [False] * 4
    stats = store.get_stats()
    assert stats["timed_out_pages"] == 4 and stats["transfer_timeouts"] == 1
    store.close()
    # The server and other stores are unaffected.
    fresh = open_nixl(s3_server.obj_config(bucket), pool)
    assert fresh.batch_set_v1(["after"], idx[: pool.page_size]) == [True]
    fresh.close()


def test_an_unreachable_endpoint_fails_per_page_and_health_check_raises(bucket: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {"plugin": "OBJ", "bucket": bucket, "endpoint": dead, "access_key": ACCESS_KEY,
              "secret_key": SECRET_KEY, "transfer_timeout_s": 10}
    pool = make_pool()
    store = open_nixl(config, pool)
    idx, _ = fill(pool, 2, seed=6)
    assert store.batch_set_v1(["d0", "d1"], idx) == [False, False]
    assert store.exists_many(["d0", "d1"]) == [False, False]
    dest = pool.alloc(2 * pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(["d0", "d1"], dest) == [False, False]
    stats = store.get_stats()
    assert stats["failed_pages"] >= 4 and stats["query_errors"] >= 2
    with pytest.raises(HiCacheError, match="does not answer"):
        store.health_check()
    store.close()


def test_obj_declares_no_delete_or_clear(s3_server: S3Server, bucket: str) -> None:
    store = open_nixl(s3_server.obj_config(bucket))
    caps = store.capabilities
    assert (caps.delete, caps.clear, caps.shared, caps.zero_copy_v1) == (False, False, True, True)
    with pytest.raises(NotImplementedError):
        store.clear()
    assert store.get_stats()["plugin"] == "OBJ"
    store.close()
