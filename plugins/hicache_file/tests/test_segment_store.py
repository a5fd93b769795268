"""The segment scheme's own promises: kill -9 never serves a torn or wrong page, processes share
one directory coherently, pages survive restarts, the size bound evicts least recently used
segments, damage is a counted miss, namespaces stay apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hicache_file.segment import namespace as namespace_module
from hicache_file.segment.config import SegmentSettings
from hicache_file.segment.format import HEADER_SIZE, JOURNAL_SIZE
from hicache_file.segment.store import SegmentStore
from segment_worker import MODEL, fill, keys_for, make_pool, page_bytes_for, read_ok

from hicache_core import BackendConfigError, HiCacheStorageConfig, HostKVPool

WORKER = Path(__file__).with_name("segment_worker.py")

Open = Callable[..., tuple[SegmentStore, HostKVPool]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "l3"


@pytest.fixture
def open_store(root: Path) -> Iterator[Open]:
    opened: list[SegmentStore] = []

    def _open(model: str = MODEL, tp_rank: int = 0, tp_size: int = 1, is_mla: bool = False, **extra: Any) -> tuple[SegmentStore, HostKVPool]:
        config = HiCacheStorageConfig(
            model_name=model, tp_rank=tp_rank, tp_size=tp_size, is_mla_model=is_mla,
            extra_config={"path": str(root), **extra},
        )
        store = SegmentStore(config)
        pool = make_pool() if not is_mla else HostKVPool(dtype=torch.bfloat16, layout="page_first", is_mla=True,
                                                           size=64 * 16, page_size=16, layer_num=2, head_num=1, head_dim=16)
        store.register_mem_pool_host(pool)
        opened.append(store)
        return store, pool

    yield _open
    for s in opened:
        s.close()


def put(store: SegmentStore, pool: HostKVPool, seed: int, n: int) -> list[bool]:
    idx = fill(pool, seed, n)
    try:
        return store.batch_set_v1(keys_for(seed, n), idx)
    finally:
        pool.free(idx)


def segment_files(store: SegmentStore) -> list[Path]:
    return sorted(Path(store._ns().dir).glob("*.seg"))


def run_worker(root: Path, mode: str, seed: int, n: int, extra: dict[str, Any] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), mode, str(seed), str(n), json.dumps(extra or {})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(WORKER.parent),
    )


def kill_when_paused(child: subprocess.Popen[str]) -> None:
    """Wait for the child to pause mid-write, then SIGKILL it there."""
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "PAUSED", f"worker did not pause: {line!r} {child.stderr.read() if child.stderr else ''}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)


# ---------------------------------------------------------------------- kill -9
def test_kill_9_mid_data_write_leaves_misses_and_old_pages(open_store: Open, root: Path) -> None:
    store, pool = open_store()
    assert put(store, pool, seed=1, n=4) == [True] * 4
    kill_when_paused(run_worker(root, "mid_write", seed=2, n=6))
    # The dead writer's pages were never journaled: misses, never torn pages, for this process...
    assert read_ok(store, pool, 2, 6) == [False] * 6
    assert store.exists_many(keys_for(2, 6)) == [False] * 6
    assert read_ok(store, pool, 1, 4) == [True] * 4
    # ...and for a restarted one, which also removes the dead writer's unjournaled segment.
    again, pool2 = open_store()
    assert again.get_stats()["orphans_removed"] == 1
    assert read_ok(again, pool2, 2, 6) == [False] * 6
    assert read_ok(again, pool2, 1, 4) == [True] * 4
    assert again.get_stats()["corrupt"] == 0
    # The keys can be written again, whole.
    assert put(again, pool2, seed=2, n=6) == [True] * 6
    assert read_ok(again, pool2, 2, 6) == [True] * 6


def test_kill_9_mid_journal_append_serves_only_whole_records(open_store: Open, root: Path) -> None:
    store, pool = open_store()
    kill_when_paused(run_worker(root, "mid_append", seed=3, n=4))
    # One whole record reached the journal before the kill, then half of the next.
    assert read_ok(store, pool, 3, 4) == [True, False, False, False]
    # Appends after the torn tail are padded past it and read by everyone.
    assert put(store, pool, seed=4, n=3) == [True] * 3
    again, pool2 = open_store()
    assert read_ok(again, pool2, 3, 4) == [True, False, False, False]
    assert read_ok(again, pool2, 4, 3) == [True] * 3
    assert again.get_stats()["torn_journal_records"] == 1
    journal = Path(again._ns().dir) / "index.log"
    assert journal.stat().st_size % JOURNAL_SIZE == 0


def test_persistent_across_restart(open_store: Open) -> None:
    store, pool = open_store()
    assert put(store, pool, seed=5, n=20) == [True] * 20
    store.close()
    again, pool2 = open_store()
    assert again.batch_exists(keys_for(5, 20)) == 20
    assert read_ok(again, pool2, 5, 20) == [True] * 20


# ---------------------------------------------------------------------- processes
def test_processes_share_one_directory(open_store: Open, root: Path) -> None:
    """Three real processes and this one write at once and each reads everyone's pages."""
    seeds = [11, 12, 13]
    store, pool = open_store()
    children = [run_worker(root, "share", s, 8, {"read_seeds": [x for x in [*seeds, 10] if x != s]}) for s in seeds]
    assert put(store, pool, seed=10, n=8) == [True] * 8
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0 and out.split()[-1] == "OK", (out, err)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for s in [10, *seeds]:
        assert read_ok(store, pool, s, 8) == [True] * 8
    assert store.get_stats()["corrupt"] == 0


def test_another_instance_sees_puts_deletes_and_clears(open_store: Open) -> None:
    a, pool_a = open_store()
    b, pool_b = open_store()
    assert put(a, pool_a, seed=20, n=4) == [True] * 4
    assert b.exists_many(keys_for(20, 4)) == [True] * 4
    assert read_ok(b, pool_b, 20, 4) == [True] * 4
    assert a.delete(keys_for(20, 4)[1])
    assert b.exists_many(keys_for(20, 4)) == [True, False, True, True]
    b.clear()
    assert a.exists_many(keys_for(20, 4)) == [False] * 4
    assert segment_files(a) == []
    assert put(a, pool_a, seed=21, n=2) == [True] * 2
    assert read_ok(b, pool_b, 21, 2) == [True] * 2


def test_many_threads_on_shared_keys(open_store: Open) -> None:
    store, pool = open_store(io_threads=2, chunk_bytes=3000, segment_bytes="16KiB")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for r in range(5):
                seed = 30 + (t + r) % 3  # threads write and read the same keys at once
                assert put(store, pool, seed, 6) == [True] * 6
                assert read_ok(store, pool, seed, 6) == [True] * 6
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]


# ---------------------------------------------------------------------- size bound
def test_eviction_under_max_pages_keeps_the_recently_used(open_store: Open) -> None:
    store, pool = open_store(max_pages=8)
    assert put(store, pool, seed=40, n=4) == [True] * 4
    assert put(store, pool, seed=41, n=4) == [True] * 4
    assert read_ok(store, pool, 40, 4) == [True] * 4  # 40 is now more recent than 41
    assert put(store, pool, seed=42, n=4) == [True] * 4
    stats = store.get_stats()
    assert stats["pages"] <= 8 and stats["evictions"] >= 4
    assert read_ok(store, pool, 41, 4) == [False] * 4
    assert read_ok(store, pool, 40, 4) == [True] * 4
    assert read_ok(store, pool, 42, 4) == [True] * 4


def test_eviction_under_max_bytes_and_across_restart(open_store: Open) -> None:
    record = HEADER_SIZE + make_pool().page_bytes
    store, pool = open_store(max_bytes=32 * record)  # segments of 2 records (1/16 of the bound)
    for seed in range(50, 56):
        assert put(store, pool, seed, 4) == [True] * 4
    store.close()
    bound = 10 * record
    again, pool2 = open_store(max_bytes=bound)  # a smaller bound than the store holds: evicts at open
    stats = again.get_stats()
    assert stats["bytes"] <= bound and stats["evictions"] >= 14
    assert read_ok(again, pool2, 55, 4) == [True] * 4
    assert read_ok(again, pool2, 50, 4) == [False] * 4
    assert sum(f.stat().st_size for f in segment_files(again)) <= bound + 4 * record
    for seed in range(56, 60):
        assert put(again, pool2, seed, 4) == [True] * 4
        assert again.get_stats()["bytes"] <= bound


def test_page_larger_than_segment_target_still_stored(open_store: Open) -> None:
    store, pool = open_store(segment_bytes=100)
    assert put(store, pool, seed=60, n=3) == [True] * 3
    assert len(segment_files(store)) == 3
    assert read_ok(store, pool, 60, 3) == [True] * 3


# ---------------------------------------------------------------------- damage
@pytest.mark.parametrize("where", ["payload", "header"])
@pytest.mark.parametrize("verify", ["first", "always"])
def test_damaged_record_is_a_counted_miss(open_store: Open, where: str, verify: str) -> None:
    writer, wpool = open_store(verify=verify)
    assert put(writer, wpool, seed=70, n=3) == [True] * 3
    (seg,) = segment_files(writer)
    record = HEADER_SIZE + wpool.page_bytes
    pos = record + (HEADER_SIZE + 100 if where == "payload" else 20)  # inside page 1
    with open(seg, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))
    reader, rpool = open_store(verify=verify)
    assert read_ok(reader, rpool, 70, 3) == [True, False, True]
    assert reader.get_stats()["corrupt"] == 1
    if verify == "always" or where == "header":
        # Under "first" the writer trusts the payload it checksummed from memory (bytes changed
        # in the file behind hicache's back are its blind spot); the header is checked always.
        assert read_ok(writer, wpool, 70, 3) == [True, False, True]


def test_segment_removed_by_hand_is_a_miss(open_store: Open) -> None:
    store, pool = open_store()
    assert put(store, pool, seed=80, n=2) == [True] * 2
    other, pool2 = open_store()
    for f in segment_files(store):
        f.unlink()
    assert read_ok(other, pool2, 80, 2) == [False, False]
    assert put(other, pool2, seed=81, n=2) == [True] * 2
    assert read_ok(other, pool2, 81, 2) == [True] * 2


def test_journal_of_another_format_reads_as_empty(open_store: Open) -> None:
    store, pool = open_store()
    assert put(store, pool, seed=85, n=2) == [True] * 2
    journal = Path(store._ns().dir) / "index.log"
    store.close()
    journal.write_bytes(b"\0" * JOURNAL_SIZE * 3)
    again, pool2 = open_store()
    assert read_ok(again, pool2, 85, 2) == [False, False]


# ---------------------------------------------------------------------- namespaces, journal upkeep
def test_models_ranks_and_mla_stay_apart(open_store: Open) -> None:
    a, pool_a = open_store(model="m1", tp_rank=0, tp_size=2)
    b, _ = open_store(model="m1", tp_rank=1, tp_size=2)
    c, _ = open_store(model="m2", tp_rank=0, tp_size=2)
    assert put(a, pool_a, seed=90, n=2) == [True] * 2
    assert b.exists_many(keys_for(90, 2)) == [False] * 2
    assert c.exists_many(keys_for(90, 2)) == [False] * 2
    c.clear()
    assert read_ok(a, pool_a, 90, 2) == [True] * 2
    # MLA: rank 0 writes, rank 1 answers True without writing and reads rank 0's pages.
    w, pool_w = open_store(model="mla", tp_rank=0, tp_size=2, is_mla=True)
    r, pool_r = open_store(model="mla", tp_rank=1, tp_size=2, is_mla=True)
    assert put(r, pool_r, seed=91, n=2) == [True] * 2
    assert w.exists_many(keys_for(91, 2)) == [False] * 2
    assert put(w, pool_w, seed=91, n=2) == [True] * 2
    assert read_ok(r, pool_r, 91, 2) == [True] * 2


def test_journal_is_compacted_and_others_follow(open_store: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace_module, "COMPACT_MIN_BYTES", 4 * JOURNAL_SIZE)
    a, pool_a = open_store()
    b, pool_b = open_store()
    for seed in range(100, 106):
        assert put(a, pool_a, seed, 3) == [True] * 3
        for key in keys_for(seed, 3)[:2]:
            a.delete(key)
    assert a.get_stats()["compactions"] >= 1
    journal = Path(a._ns().dir) / "index.log"
    assert journal.stat().st_size < 20 * JOURNAL_SIZE
    for seed in range(100, 106):
        assert b.exists_many(keys_for(seed, 3)) == [False, False, True]
        assert read_ok(b, pool_b, seed, 3)[2]


def test_flat_pages_share_keys_with_v1(open_store: Open) -> None:
    store, pool = open_store()
    key = keys_for(110, 1)[0]
    page = page_bytes_for(110, 0, pool.page_bytes).view(pool.dtype)
    assert store.set(key, page)
    got = store.get(key)
    assert got is not None and torch.equal(got.view(torch.uint8), page.view(torch.uint8))
    assert read_ok(store, pool, 110, 1) == [True]
    assert store.get(key, torch.empty(3, dtype=torch.uint8)) is None  # a buffer of the wrong size: miss
    assert store.get_stats()["wrong_size"] == 1


@pytest.mark.parametrize(("extra", "key"), [
    ({"verify": "never"}, "verify"), ({"max_bytes": "lots"}, "max_bytes"), ({"max_pages": 0}, "max_pages"),
    ({"segment_bytes": -1}, "segment_bytes"), ({"io_threads": "two"}, "io_threads"),
])
def test_bad_config_names_the_key(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(BackendConfigError, match=key):
        SegmentSettings.from_extra(extra)


def test_path_precedence(tmp_path: Path) -> None:
    env = {"HICACHE_FILE_PATH": str(tmp_path / "env")}
    assert SegmentSettings.from_extra({"file_storage_path": str(tmp_path / "sgl")}, env).path == str(tmp_path / "sgl")
    assert SegmentSettings.from_extra({"path": str(tmp_path / "p"), "file_storage_path": "x"}, env).path == str(tmp_path / "p")
    assert SegmentSettings.from_extra({}, env).path == str(tmp_path / "env")


def test_config_model_refuses_unknown_keys_and_bad_values() -> None:
    from pydantic import ValidationError

    model: Any = SegmentStore.config_model
    model.model_validate({"path": "/x", "scheme": "segment", "verify": "always", "segment_bytes": "8MiB"})
    for bad in ({"segmnet_bytes": 1}, {"verify": "never"}, {"scheme": "pagefile"}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


def test_set_of_a_stored_page_refreshes_it_without_a_rewrite(open_store: Open) -> None:
    store, pool = open_store(max_pages=8)
    assert put(store, pool, seed=120, n=4) == [True] * 4
    assert put(store, pool, seed=121, n=4) == [True] * 4
    writes = store.get_stats()["writes"]
    assert put(store, pool, seed=120, n=4) == [True] * 4  # offered again: used, not rewritten
    assert store.get_stats()["writes"] == writes and store.get_stats()["unchanged"] == 4
    assert put(store, pool, seed=122, n=4) == [True] * 4
    assert read_ok(store, pool, 121, 4) == [False] * 4
    assert read_ok(store, pool, 120, 4) == [True] * 4


# ---------------------------------------------------------------------- I/O shape
def test_checked_pages_are_read_in_longer_runs(open_store: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of pages whose checksum is due is at most ``chunk_bytes`` (checked while in the CPU
    cache); pages already checked by this process are read up to ``RUN_BYTES`` per call."""
    from hicache_file.segment import batch as batch_module

    calls: list[int] = []
    real = batch_module.preadv_all

    def counting(fd: int, bufs: Any, offset: int, total: int | None = None) -> int:
        calls.append(len(bufs))
        return real(fd, bufs, offset, total)

    monkeypatch.setattr(batch_module, "preadv_all", counting)
    record = HEADER_SIZE + make_pool().page_bytes
    writer, wpool = open_store(chunk_bytes=record)
    assert put(writer, wpool, seed=130, n=8) == [True] * 8
    assert read_ok(writer, wpool, 130, 8) == [True] * 8  # written from memory: checked
    assert len(calls) == 1
    reader, rpool = open_store(chunk_bytes=record)
    calls.clear()
    assert read_ok(reader, rpool, 130, 8) == [True] * 8  # not checked yet here: a page per call
    assert len(calls) == 8
    calls.clear()
    assert read_ok(reader, rpool, 130, 8) == [True] * 8  # checked now: one run
    assert len(calls) == 1
    always, apool = open_store(chunk_bytes=record, verify="always")
    calls.clear()
    assert read_ok(always, apool, 130, 8) == [True] * 8
    assert read_ok(always, apool, 130, 8) == [True] * 8
    assert len(calls) == 16


def test_big_pages_use_two_threads_by_default() -> None:
    assert SegmentSettings.from_extra({}).io_threads == 2
    assert SegmentSettings.from_extra({"io_threads": 1}).io_threads == 1


def test_io_threads_take_jobs_as_they_get_free(open_store: Open) -> None:
    """Jobs run once each, results in order; a helper thread busy elsewhere holds nothing up."""
    from hicache_file.segment.threads import PARALLEL_MIN_PAGE_BYTES

    store, _ = open_store(io_threads=2)
    ran: list[int] = []
    assert store._threads.run(list(range(50)), lambda j: ran.append(j) or j * 2, PARALLEL_MIN_PAGE_BYTES) == [
        j * 2 for j in range(50)
    ]
    assert sorted(ran) == list(range(50))
    assert store._threads.executor is not None
    release = threading.Event()
    busy = store._threads.executor.submit(release.wait, 60)  # the only helper, taken by another batch
    try:
        done: list[Any] = []
        caller = threading.Thread(target=lambda: done.append(store._threads.run([1, 2, 3], lambda j: -j, PARALLEL_MIN_PAGE_BYTES)))
        caller.start()
        caller.join(timeout=30)
        assert done == [[-1, -2, -3]]
    finally:
        release.set()
        busy.result(timeout=30)


@pytest.mark.parametrize("helper_busy", [False, True])
def test_checksums_computed_ahead_are_the_pages(open_store: Open, monkeypatch: pytest.MonkeyPatch, helper_busy: bool) -> None:
    """Big-page writes: helpers checksum the chunks ahead while the caller writes (or, helper
    busy elsewhere, the caller does it); either way a reader checking every page gets them all."""
    from hicache_file.segment import threads as threads_module

    monkeypatch.setattr(threads_module, "PARALLEL_MIN_PAGE_BYTES", 0)
    record = HEADER_SIZE + make_pool().page_bytes
    writer, wpool = open_store(io_threads=2, chunk_bytes=record)
    release = threading.Event()
    helpers = writer._threads.helpers()
    assert helpers is not None
    busy = helpers.submit(release.wait, 60) if helper_busy else None
    try:
        assert put(writer, wpool, seed=140, n=12) == [True] * 12
    finally:
        release.set()
        if busy is not None:
            busy.result(timeout=30)
    reader, rpool = open_store(verify="always")
    assert read_ok(reader, rpool, 140, 12) == [True] * 12
    assert reader.get_stats()["corrupt"] == 0


def test_reads_from_disk_go_one_thread_from_page_cache_side_by_side(open_store: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    from hicache_file.segment import threads as threads_module

    monkeypatch.setattr(threads_module, "PARALLEL_MIN_PAGE_BYTES", 0)
    record = HEADER_SIZE + make_pool().page_bytes
    store, pool = open_store(io_threads=2, chunk_bytes=record)
    assert put(store, pool, seed=150, n=8) == [True] * 8
    seen: list[int] = []
    real = store._threads.run
    monkeypatch.setattr(store._threads, "run", lambda jobs, fn, page_bytes: seen.append(page_bytes) or real(jobs, fn, page_bytes))
    assert read_ok(store, pool, 150, 8) == [True] * 8  # just written: in the page cache
    assert seen[-1] > 0
    if _fs_type(str(segment_files(store)[0])) in ("tmpfs", "ramfs"):
        pytest.skip("pages of this file system live in memory: nothing is ever read from a disk")
    for path in segment_files(store):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    assert read_ok(store, pool, 150, 8) == [True] * 8  # from the disk
    assert seen[-1] == 0


def _fs_type(path: str) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fstype
    return kind
