"""The file flavour beyond the kit: layout on disk, engines, size bound, O_DIRECT, failures.

Everything runs NIXL's POSIX plugin for real; failures are real I/O errors (a file-size
limit set with RLIMIT_FSIZE makes the kernel refuse the writes NIXL submits).
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)
import torch
from hicache_nixl.files import TMP_MARK
from hicache_nixl.transfer import Outcome
from nixl_helpers import assert_round_trip, fill, make_pool, open_nixl

from hicache_core.memory.pages import page_geometry
from hicache_core.spec.errors import BackendConfigError


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Make the kernel fail writes past ``nbytes`` in this process (EFBIG, signal ignored)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_one_sharded_file_per_page_with_the_page_bytes(tmp_path: Path) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    idx, expected = fill(pool, 3, seed=1)
    assert store.batch_set_v1(["a1", "b2", "c3"], idx) == [True] * 3
    files = all_files(tmp_path)
    assert len(files) == 3
    for f in files:
        rel = f.relative_to(tmp_path).parts
        assert len(rel) == 3 and all(len(part) == 2 for part in rel[:2])  # two shard levels
        assert rel[2].endswith("@" + store.namespace)  # the pool namespace is part of the name
    assert "tp0of1" in store.namespace and "mha-bf16" in store.namespace
    by_name = {f.name.split("@")[0]: f.read_bytes() for f in files}
    assert [by_name["a1"], by_name["b2"], by_name["c3"]] == expected  # the flat page: K piece then V piece
    store.close()


@pytest.mark.parametrize("engine", ["aio", "uring", "posix_aio"])
def test_each_posix_engine_round_trips(tmp_path: Path, engine: str) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path), "posix_engine": engine}, pool)
    assert_round_trip(store, pool, 16, seed=2, prefix="e")
    assert store.get_stats()["posix_engine"] == engine
    store.close()


def test_exists_reads_no_data_and_checks_the_page_size(tmp_path: Path) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    idx, _ = fill(pool, 2, seed=3)
    assert store.batch_set_v1(["good", "short"], idx) == [True, True]
    short = next(f for f in all_files(tmp_path) if f.name.startswith("short"))
    short.write_bytes(b"x" * 10)  # a foreign or torn file of the wrong size
    before = store.get_stats()
    assert store.exists_many(["good", "short", "absent"]) == [True, False, False]
    assert store.batch_exists(["good", "short", "good"]) == 1
    after = store.get_stats()
    assert after["bytes_read"] == before["bytes_read"] and after["get_pages"] == before["get_pages"]
    dest = pool.alloc(2 * pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(["good", "short"], dest) == [True, False]
    assert store.get_stats()["size_mismatches"] == 1
    store.close()


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    pool = make_pool(pages=64)
    bound = 10 * pool.page_bytes
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path), "max_bytes": bound}, pool)
    idx, _ = fill(pool, 20, seed=4)
    pages = pool.indices_to_pages(idx)
    keys = [f"lru{i}" for i in range(20)]
    per_page = [pool.pages_to_indices([p]) for p in pages]
    for i in range(8):
        assert store.batch_set_v1([keys[i]], per_page[i]) == [True]
    dest = pool.alloc(pool.page_size)
    assert dest is not None
    assert store.batch_get_v1([keys[0]], dest) == [True]  # page 0 becomes most recently used
    for i in range(8, 13):
        assert store.batch_set_v1([keys[i]], per_page[i]) == [True]
    stats = store.get_stats()
    assert stats["stored_bytes"] <= bound
    assert stats["evicted_pages"] == 3
    assert sum(f.stat().st_size for f in all_files(tmp_path)) <= bound
    assert store.exists(keys[0]) is True  # read after it was written: kept
    assert store.exists_many(keys[1:4]) == [False] * 3  # the least recently used: evicted
    assert store.exists_many(keys[4:13]) == [True] * 9
    store.close()


def test_size_bound_counts_files_already_on_disk(tmp_path: Path) -> None:
    pool = make_pool()
    first = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    idx, _ = fill(pool, 6, seed=5)
    assert first.batch_set_v1([f"old{i}" for i in range(6)], idx) == [True] * 6
    first.close()
    second = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path), "max_bytes": 4 * pool.page_bytes}, pool)
    assert second.get_stats()["stored_pages"] == 6
    idx2, _ = fill(pool, 1, seed=6)
    assert second.batch_set_v1(["new"], idx2) == [True]
    assert second.get_stats()["stored_bytes"] <= 4 * pool.page_bytes
    assert second.exists("new") is True
    second.close()


def test_failed_writes_are_per_page_counted_and_leave_nothing(tmp_path: Path) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    idx, _ = fill(pool, 4, seed=7)
    keys = ["w0", "w1", "w2", "w3"]
    with file_size_limit(pool.page_bytes // 2):
        result = store.batch_set_v1(keys, idx)
    assert result == [False] * 4
    stats = store.get_stats()
    assert stats["failed_pages"] == 4 and stats["stored"] == 0
    assert stats["pending_releases"] == 0  # every handle was released
    assert all_files(tmp_path) == []  # no page and no temporary left behind
    assert store.exists_many(keys) == [False] * 4
    assert store.batch_set_v1(keys, idx) == [True] * 4  # the same store works afterwards
    store.close()


def test_a_failed_batch_is_retried_page_by_page(tmp_path: Path) -> None:
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)})
    small, large = torch.ones(1024, dtype=torch.uint8), torch.ones(64 * 1024, dtype=torch.uint8)
    with file_size_limit(4096):
        ok = store.batch_set(["small0", "large", "small1"], [small, large, small])
    assert ok is False
    assert store.exists_many(["small0", "large", "small1"]) == [True, False, True]
    got = store.get("small1")
    assert got is not None and bytes(got.numpy()) == bytes(small.numpy())
    assert store.get_stats()["failed_pages"] == 1
    store.close()


def test_a_transfer_error_is_an_outcome_and_the_handle_is_released(tmp_path: Path) -> None:
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)})
    buf = torch.zeros(8192, dtype=torch.uint8)
    path = tmp_path / "short"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    agent = store.agent
    regs = [agent.register_memory(buf, backends=["POSIX"]),
            agent.register_memory([(0, 8192, fd, "")], "FILE", backends=["POSIX"])]
    try:
        local = np.array([[buf.data_ptr(), 8192, 0]], dtype=np.uint64)
        remote = np.array([[0, 8192, fd]], dtype=np.uint64)
        assert store.transfers.run("READ", local, remote) is Outcome.FAILED  # a short read
    finally:
        for reg in regs:
            agent.deregister_memory(reg, backends=["POSIX"])
        os.close(fd)
    assert store.transfers.errors == 1 and store.transfers.pending_releases == 0
    store.close()


def test_legacy_get_set_without_a_pool(tmp_path: Path) -> None:
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)})
    value = torch.arange(300, dtype=torch.int16)
    assert store.set("plain", value) is True
    got = store.get("plain")
    assert got is not None and got.numel() * got.element_size() == 600
    assert bytes(got.view(torch.uint8).numpy()) == bytes(value.view(torch.uint8).numpy())
    target = torch.zeros(300, dtype=torch.int16)
    assert store.get("plain", target) is target and torch.equal(target, value)
    strided = torch.zeros(600, dtype=torch.int16)[::2]  # not contiguous: read through a staging copy
    assert store.get("plain", strided) is strided and torch.equal(strided, value)
    assert store.get("absent") is None
    assert store.set("nothing", None) is False
    store.close()


def test_delete_and_clear_remove_only_page_files(tmp_path: Path) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    keep = tmp_path / "operator-notes.txt"
    keep.write_text("not a page")
    idx, _ = fill(pool, 3, seed=8)
    assert store.batch_set_v1(["d0", "d1", "d2"], idx) == [True] * 3
    assert store.delete("d0") is True and store.exists("d0") is False
    store.clear()
    assert store.exists_many(["d1", "d2"]) == [False, False]
    assert keep.read_text() == "not a page"
    store.close()


def test_mla_non_writer_rank_writes_nothing(tmp_path: Path) -> None:
    pool = make_pool(is_mla=True)
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool, is_mla_model=True, tp_rank=1, tp_size=2)
    idx, _ = fill(pool, 2, seed=9)
    assert store.batch_set_v1(["m0", "m1"], idx) == [True, True]
    assert all_files(tmp_path) == []
    assert store.get_stats()["skipped_non_writer"] == 2
    store.close()


def test_o_direct_true_refuses_an_unaligned_pool(tmp_path: Path) -> None:
    pool = make_pool()
    if pool.kv_buffer.data_ptr() % 4096 == 0:
        pytest.skip("this allocator returned a 4 KiB aligned pool; the unaligned case cannot be built")
    with pytest.raises(BackendConfigError, match=r"o_direct=true.*aligned"):
        open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path), "o_direct": "true"}, pool)


def test_o_direct_auto_says_why_it_is_off(tmp_path: Path) -> None:
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path), "o_direct": "auto"}, make_pool())
    stats = store.get_stats()
    if make_pool().kv_buffer.data_ptr() % 4096 == 0:
        pytest.skip("this allocator returned a 4 KiB aligned pool; the unaligned case cannot be built")
    assert stats["o_direct"] is False and "aligned" in stats["o_direct_reason"]
    store.close()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_o_direct_round_trip_with_an_aligned_pool(tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    root = tmp_path if where == "disk" else request.getfixturevalue("shm_dir")
    pool = _aligned_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(root), "o_direct": "auto"}, pool)
    stats = store.get_stats()
    if not stats["o_direct"]:
        # Older kernels' tmpfs refuses O_DIRECT (EINVAL); auto then stays off and says so.
        assert "refuses O_DIRECT" in stats["o_direct_reason"]
        pytest.skip(f"O_DIRECT is not available on {where} here: {stats['o_direct_reason']}")
    assert_round_trip(store, pool, 8, seed=10, prefix="direct")
    store.close()


def _aligned_pool() -> object:
    """A pool whose buffer starts on a 4 KiB boundary, as pinned (cudaHostAlloc) pools do.

    torch's CPU allocator aligns to 64 bytes only, so the buffer is re-seated on an aligned
    slice of a slightly larger allocation; pieces are 4 KiB multiples by shape.
    """
    pool = make_pool(pages=32, page_size=16, layer_num=4, head_num=4, head_dim=8)  # 4 KiB pieces
    raw = torch.zeros(pool.kv_buffer.numel() * pool.kv_buffer.element_size() + 4096, dtype=torch.uint8)
    skip = (-raw.data_ptr()) % 4096
    aligned = raw[skip: skip + pool.kv_buffer.numel() * pool.kv_buffer.element_size()]
    pool.kv_buffer = aligned.view(pool.dtype).view(pool.kv_buffer.shape)
    pool._aligned_owner = raw  # type: ignore[attr-defined]  # keep the allocation alive
    pool.geometry = page_geometry(pool)  # the pieces now lie in the re-seated buffer
    return pool


def test_no_temporaries_survive_a_normal_run(tmp_path: Path) -> None:
    pool = make_pool()
    store = open_nixl({"plugin": "POSIX", "storage_dir": str(tmp_path)}, pool)
    idx, _ = fill(pool, 4, seed=11)
    assert store.batch_set_v1([f"t{i}" for i in range(4)], idx) == [True] * 4
    assert not [f for f in all_files(tmp_path) if TMP_MARK in f.name]
    store.close()
