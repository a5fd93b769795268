"""The file backend's own promises: atomic writes, corruption detection, LRU bound, isolation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from file_torn_writer import POOL_SHAPE, make_pool, page_bytes_for
from hicache_file import base as base_module
from hicache_file.config import FileStoreSettings, parse_size
from hicache_file.pagedir import namespace_dirname, page_rel
from hicache_file.pageformat import HEADER_SIZE
from hicache_file.store import FileStore

from hicache_core import BackendConfigError, HiCacheStorageConfig, HostKVPool

WRITER = Path(__file__).with_name("file_torn_writer.py")
KEY = "ab" + "0" * 62


def hexkey(i: int) -> str:
    return f"{i:064x}"[::-1]  # varied first two characters, so pages spread over shards


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "l3"


@pytest.fixture
def open_store(root: Path) -> Iterator[Callable[..., tuple[FileStore, HostKVPool]]]:
    opened: list[FileStore] = []

    def _open(model: str = "m", tp_rank: int = 0, tp_size: int = 1, is_mla: bool = False, **extra: Any) -> tuple[FileStore, HostKVPool]:
        config = HiCacheStorageConfig(
            model_name=model, tp_rank=tp_rank, tp_size=tp_size, is_mla_model=is_mla,
            extra_config={"path": str(root), **extra},
        )
        store = FileStore(config)
        pool = HostKVPool(dtype=torch.bfloat16, layout="page_first", is_mla=is_mla, **POOL_SHAPE)
        store.register_mem_pool_host(pool)
        opened.append(store)
        return store, pool

    yield _open
    for s in opened:
        s.close()


def put(store: FileStore, pool: HostKVPool, key: str, seed: int) -> torch.Tensor:
    """Store a page filled from ``seed`` under ``key``; returns its bytes."""
    data = page_bytes_for(seed, pool.page_bytes)
    idx = pool.alloc(pool.page_size)
    assert idx is not None
    pool.write_page(pool.indices_to_pages(idx)[0], data.view(pool.dtype))
    assert store.batch_set_v1([key], idx) == [True]
    pool.free(idx)
    return data


def fetch(store: FileStore, pool: HostKVPool, key: str) -> torch.Tensor | None:
    """The page under ``key`` read through v1, or None on a miss."""
    idx = pool.alloc(pool.page_size)
    assert idx is not None
    try:
        if store.batch_get_v1([key], idx) != [True]:
            return None
        return pool.read_page(pool.indices_to_pages(idx)[0]).view(torch.uint8).clone()
    finally:
        pool.free(idx)


def page_file(store: FileStore, key: str) -> Path:
    return Path(store.namespace_dir) / page_rel(key)


# ---------------------------------------------------------------------- atomicity
def _kill_mid_write(root: Path, key: str, seed: int, stage: str = "mid_write") -> None:
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(root), key, str(seed), stage],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child is between its two writes
        assert line.strip() == "PAUSED", f"writer did not pause: {line!r} {child.stderr.read() if child.stderr else ''}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)


def test_kill_9_mid_write_leaves_the_old_page(open_store: Callable[..., tuple[FileStore, HostKVPool]], root: Path) -> None:
    store, pool = open_store(model="torn")
    old = put(store, pool, KEY, seed=1)
    _kill_mid_write(root, KEY, seed=2)
    leftovers = [p for p in page_file(store, KEY).parent.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1, "the child should have died with its temporary file half written"
    assert 0 < leftovers[0].stat().st_size < HEADER_SIZE + pool.page_bytes
    got = fetch(store, pool, KEY)
    assert got is not None and torch.equal(got, old)
    # A restarted store removes the dead writer's temporary file and still serves the old page.
    again, pool2 = open_store(model="torn")
    assert again.get_stats()["stale_tmp_removed"] == 1
    assert not any(p.name.startswith(".tmp-") for p in page_file(again, KEY).parent.iterdir())
    got = fetch(again, pool2, KEY)
    assert got is not None and torch.equal(got, old)


def test_kill_9_mid_write_of_a_new_page_leaves_a_miss(open_store: Callable[..., tuple[FileStore, HostKVPool]], root: Path) -> None:
    store, pool = open_store(model="torn")
    _kill_mid_write(root, KEY, seed=3)
    assert store.exists(KEY) is False
    assert fetch(store, pool, KEY) is None
    assert store.get_stats()["corrupt"] == 0  # nothing torn was ever visible under the name


def test_kill_9_between_removing_the_old_page_and_renaming_recovers_the_new_page(
    open_store: Callable[..., tuple[FileStore, HostKVPool]], root: Path
) -> None:
    store, pool = open_store(model="torn")
    put(store, pool, KEY, seed=1)
    _kill_mid_write(root, KEY, seed=2, stage="before_rename")
    assert fetch(store, pool, KEY) is None, "in the gap the page is a miss, never torn"
    again, pool2 = open_store(model="torn")
    stats = again.get_stats()
    assert stats["recovered"] == 1 and stats["stale_tmp_removed"] == 0
    got = fetch(again, pool2, KEY)
    assert got is not None and torch.equal(got, page_bytes_for(2, pool2.page_bytes))
    assert not any(p.name.startswith(".tmp-") for p in page_file(again, KEY).parent.iterdir())


def test_same_bytes_are_not_rewritten_and_new_bytes_are(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    put(store, pool, KEY, seed=8)
    inode = page_file(store, KEY).stat().st_ino
    put(store, pool, KEY, seed=8)
    assert page_file(store, KEY).stat().st_ino == inode and store.get_stats()["unchanged"] == 1
    new = put(store, pool, KEY, seed=9)
    assert page_file(store, KEY).stat().st_ino != inode
    got = fetch(store, pool, KEY)
    assert got is not None and torch.equal(got, new)
    assert store.get_stats()["writes"] == 2


def test_page_deleted_between_the_same_bytes_check_and_the_commit_is_written(
    open_store: Callable[..., tuple[FileStore, HostKVPool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, pool = open_store()
    put(store, pool, KEY, seed=12)
    folder = store._dir()
    real = folder.stored_header

    def racing(rel: str) -> bytes | None:
        header = real(rel)
        store.delete(KEY)  # as another thread might, right after the check
        return header

    monkeypatch.setattr(folder, "stored_header", racing)
    data = put(store, pool, KEY, seed=12)  # the same bytes again
    monkeypatch.undo()
    got = fetch(store, pool, KEY)
    assert got is not None and torch.equal(got, data), "a True answer means the page is there"


# ---------------------------------------------------------------------- corruption
def test_flipped_byte_is_a_counted_miss_and_removed(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    put(store, pool, KEY, seed=5)
    path = page_file(store, KEY)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 1000] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.exists(KEY) is True  # same size: exists does not read data
    assert fetch(store, pool, KEY) is None
    stats = store.get_stats()
    assert stats["corrupt"] == 1 and stats["hits"] == 0
    assert not path.exists(), "a corrupt page is removed so it is not read again"


@pytest.mark.parametrize("checksum", ["xxh3", "crc32"])
def test_corrupt_header_and_payload_with_each_checksum(open_store: Callable[..., tuple[FileStore, HostKVPool]], checksum: str) -> None:
    store, pool = open_store(checksum=checksum, remove_corrupt=False)
    keys = [hexkey(i) for i in range(3)]
    for i, k in enumerate(keys):
        put(store, pool, k, seed=10 + i)
    for offset, k in zip((0, 8, HEADER_SIZE + pool.page_bytes - 1), keys):  # magic, length, last byte
        path = page_file(store, k)
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0xFF
        path.write_bytes(bytes(raw))
    assert [fetch(store, pool, k) for k in keys] == [None, None, None]
    assert store.get_stats()["corrupt"] == 3
    assert all(page_file(store, k).exists() for k in keys)  # remove_corrupt=False keeps them


@pytest.mark.parametrize("change", ["truncate", "append", "empty"])
def test_wrong_size_file_is_a_miss(open_store: Callable[..., tuple[FileStore, HostKVPool]], change: str) -> None:
    store, pool = open_store()
    put(store, pool, KEY, seed=6)
    path = page_file(store, KEY)
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:-100], "append": raw + b"x", "empty": b""}[change])
    assert store.exists(KEY) is False
    assert fetch(store, pool, KEY) is None
    assert store.get_stats()["corrupt"] == 1


def test_page_of_another_pool_shape_is_a_counted_miss_and_kept(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, _pool = open_store()
    small = torch.arange(100, dtype=torch.uint8)
    assert store.set(KEY, small) is True  # legacy set of a page of another size
    other, pool = open_store()
    assert other.exists(KEY) is False
    assert fetch(other, pool, KEY) is None
    stats = other.get_stats()
    assert (stats["wrong_size"], stats["corrupt"]) == (1, 0)
    assert page_file(other, KEY).exists(), "a sound page of another size is not damage"
    got = store.get(KEY, torch.empty(100, dtype=torch.uint8))
    assert got is not None and torch.equal(got, small)


def test_legacy_get_into_a_wrong_sized_buffer_keeps_the_page(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    data = put(store, pool, KEY, seed=4)
    assert store.get(KEY, torch.empty(10, dtype=torch.uint8)) is None
    got = store.get(KEY, torch.empty(pool.page_bytes, dtype=torch.uint8))
    assert got is not None and torch.equal(got, data)
    got = store.get(KEY)  # no buffer: one of the pool's page size, in the pool's dtype
    assert got is not None and got.dtype == pool.dtype and torch.equal(got.view(torch.uint8), data)


def test_file_copied_under_another_key_is_a_miss(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    put(store, pool, hexkey(1), seed=7)
    target = page_file(store, hexkey(2))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(page_file(store, hexkey(1)).read_bytes())
    assert fetch(store, pool, hexkey(2)) is None
    assert store.get_stats()["corrupt"] == 1


# ---------------------------------------------------------------------- size bound and LRU
def test_eviction_under_max_pages(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store(max_pages=3)
    keys = [hexkey(i) for i in range(5)]
    for i, k in enumerate(keys[:3]):
        put(store, pool, k, seed=20 + i)
    assert fetch(store, pool, keys[0]) is not None  # keys[0] becomes the most recently used
    put(store, pool, keys[3], seed=23)
    put(store, pool, keys[4], seed=24)
    assert store.exists_many(keys) == [True, False, False, True, True]
    stats = store.get_stats()
    assert stats["evictions"] == 2 and stats["pages"] == 3
    assert len(list(Path(store.namespace_dir).rglob("*.hcp"))) == 3


def test_eviction_under_max_bytes(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    _probe, pool = open_store(model="probe")
    file_bytes = HEADER_SIZE + pool.page_bytes
    store, pool = open_store(max_bytes=str(4 * file_bytes + 10))
    keys = [hexkey(i) for i in range(6)]
    for i, k in enumerate(keys):
        put(store, pool, k, seed=30 + i)
    assert store.exists_many(keys) == [False, False, True, True, True, True]
    assert store.get_stats()["bytes"] == 4 * file_bytes
    assert sum(p.stat().st_size for p in Path(store.namespace_dir).rglob("*.hcp")) == 4 * file_bytes


def test_page_larger_than_the_bound_is_refused(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store(max_bytes=1000)
    idx = pool.alloc(pool.page_size)
    assert idx is not None
    assert store.batch_set_v1([KEY], idx) == [False]
    assert store.get_stats()["too_large"] == 1 and not store.exists(KEY)


def test_lru_order_survives_reopen(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store(max_pages=3)
    keys = [hexkey(i) for i in range(4)]
    for i, k in enumerate(keys[:3]):
        put(store, pool, k, seed=40 + i)
    # Age the pages so the on-disk order is unambiguous: keys[0] oldest ... keys[2] newest.
    now = time.time()
    for age, k in zip((300, 200, 100), keys[:3]):
        os.utime(page_file(store, k), (now - age, now - age))
    store.close()
    again, pool2 = open_store(max_pages=3)
    assert again.get_stats()["pages"] == 3
    assert fetch(again, pool2, keys[0]) is not None  # the hit refreshes keys[0] on disk too
    again.close()
    third, pool3 = open_store(max_pages=3)
    put(third, pool3, keys[3], seed=43)
    assert third.exists_many(keys) == [True, False, True, True], "keys[1] was least recently used"


def test_reopen_with_a_smaller_bound_evicts_oldest(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    keys = [hexkey(i) for i in range(4)]
    now = time.time()
    for i, k in enumerate(keys):
        put(store, pool, k, seed=50 + i)
        os.utime(page_file(store, k), (now - 100 + i, now - 100 + i))
    store.close()
    again, _ = open_store(max_pages=2)
    assert again.exists_many(keys) == [False, False, True, True]
    assert again.get_stats()["evictions"] == 2


# ---------------------------------------------------------------------- namespaces and ranks
def test_models_and_ranks_do_not_see_each_other(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    a, pool_a = open_store(model="org/model-a", tp_rank=0, tp_size=2)
    b, pool_b = open_store(model="org/model-b", tp_rank=0, tp_size=2)
    a1, pool_a1 = open_store(model="org/model-a", tp_rank=1, tp_size=2)
    data_a = put(a, pool_a, KEY, seed=60)
    assert b.exists(KEY) is False and fetch(b, pool_b, KEY) is None
    assert a1.exists(KEY) is False and fetch(a1, pool_a1, KEY) is None
    data_b = put(b, pool_b, KEY, seed=61)
    got_a, got_b = fetch(a, pool_a, KEY), fetch(b, pool_b, KEY)
    assert got_a is not None and torch.equal(got_a, data_a)
    assert got_b is not None and torch.equal(got_b, data_b)
    b.clear()
    assert a.exists(KEY) is True and b.exists(KEY) is False  # clear is per namespace
    assert len({a.namespace_dir, b.namespace_dir, a1.namespace_dir}) == 3
    assert page_file(a, KEY).name == KEY + ".hcp" and a.namespace in a.namespace_dir


def test_namespace_dirnames_are_distinct_and_safe() -> None:
    suffixes = ["_m_0_1", "__m_0_1", "_a b_0_1", "_a-b_0_1", "_.hidden_0_1", "_m_0_1_1_2"]
    names = [namespace_dirname(s) for s in suffixes]
    assert len(set(names)) == len(names)
    assert all("/" not in n and " " not in n and not n.startswith(".") for n in names)


def test_mla_only_rank_0_writes_and_every_rank_reads(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    r0, pool0 = open_store(model="mla", tp_rank=0, tp_size=2, is_mla=True)
    r1, pool1 = open_store(model="mla", tp_rank=1, tp_size=2, is_mla=True)
    assert r0.namespace_dir == r1.namespace_dir
    put(r1, pool1, KEY, seed=70)  # a non-writer's set answers True and writes nothing
    assert r0.exists(KEY) is False and r1.get_stats()["skipped_not_writer"] == 1
    data = put(r0, pool0, KEY, seed=71)
    got = fetch(r1, pool1, KEY)
    assert got is not None and torch.equal(got, data)


def test_keys_that_are_not_file_names(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    odd = ["../../etc/passwd", "a/b", ".hidden", "x" * 400, "ключ"]
    pages = [put(store, pool, k, seed=80 + i) for i, k in enumerate(odd)]
    for k, data in zip(odd, pages):
        got = fetch(store, pool, k)
        assert got is not None and torch.equal(got, data)
    files = list(Path(store.namespace_dir).rglob("*.hcp"))
    assert len(files) == len(odd)
    assert all(Path(store.namespace_dir) in f.parents for f in files)


# ---------------------------------------------------------------------- threads
def test_many_threads_on_shared_keys_never_see_a_torn_page(
    open_store: Callable[..., tuple[FileStore, HostKVPool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_module, "PARALLEL_MIN_PAGE_BYTES", 0)  # batches use the thread pool too
    store, _ = open_store(io_threads=3)
    pool = HostKVPool(size=16 * 96, page_size=16, layer_num=2, head_num=2, head_dim=8, dtype=torch.bfloat16)
    store.register_mem_pool_host(pool)
    keys = [hexkey(i) for i in range(4)]
    versions = {s: page_bytes_for(s, pool.page_bytes) for s in range(90, 94)}
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0

    def writer(seed: int) -> None:
        try:
            idx = pool.alloc(4 * pool.page_size)
            assert idx is not None
            for p in pool.indices_to_pages(idx):
                pool.write_page(p, versions[seed].view(pool.dtype))
            while time.monotonic() < stop:
                assert store.batch_set_v1(keys, idx) == [True] * 4
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            idx = pool.alloc(4 * pool.page_size)
            assert idx is not None
            while time.monotonic() < stop:
                ok = store.batch_get_v1(keys, idx)
                for hit, p in zip(ok, pool.indices_to_pages(idx)):
                    if hit:
                        got = pool.read_page(p).view(torch.uint8)
                        assert any(torch.equal(got, v) for v in versions.values()), "served a mixed page"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in versions]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    stats = store.get_stats()
    assert stats["corrupt"] == 0 and stats["hits"] > 0 and stats["pages"] == 4
    assert not [p for p in Path(store.namespace_dir).rglob(".tmp-*")]


# ---------------------------------------------------------------------- configuration
def test_path_precedence(tmp_path: Path) -> None:
    env = {"HICACHE_FILE_PATH": str(tmp_path / "env"), "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": str(tmp_path / "sgl")}
    assert FileStoreSettings.from_extra({"path": "/a", "file_storage_path": "/b"}, env).path == "/a"
    assert FileStoreSettings.from_extra({"file_storage_path": "/b"}, env).path == "/b"
    assert FileStoreSettings.from_extra({}, env).path == str(tmp_path / "env")
    assert FileStoreSettings.from_extra({}, {"SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": "/s"}).path == "/s"
    assert FileStoreSettings.from_extra({}, {}).path == "/tmp/hicache"


def test_env_path_through_the_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hicache_core import create_backend

    monkeypatch.setenv("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", str(tmp_path / "sgl"))
    backend = create_backend("file", HiCacheStorageConfig(model_name="m"))
    try:
        assert isinstance(backend, FileStore) and backend.root == str(tmp_path / "sgl")
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"max_bytes": "lots"}, "max_bytes"), ({"max_pages": 0}, "max_pages"), ({"fsync": "maybe"}, "fsync"),
     ({"checksum": "md5"}, "checksum"), ({"io_threads": "x"}, "io_threads")],
)
def test_bad_config_names_the_key(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(BackendConfigError, match=field):
        FileStoreSettings.from_extra(extra, {})


def test_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(BackendConfigError, match="path"):
        FileStore(HiCacheStorageConfig(extra_config={"path": str(blocker / "l3")}))


def test_parse_size() -> None:
    assert parse_size(4096) == 4096
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("64G") == 64 << 30
    assert parse_size("1.5k") == 1536


def test_fsync_mode_round_trips(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store(fsync=True)
    data = put(store, pool, KEY, seed=99)
    got = fetch(store, pool, KEY)
    assert got is not None and torch.equal(got, data)


def test_health_check_notices_a_removed_directory(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    import shutil

    store, pool = open_store()
    store.health_check()
    shutil.rmtree(store.namespace_dir)
    with pytest.raises(Exception, match="gone"):
        store.health_check()
    # Writes recreate what they need; the store keeps working once the directory is back.
    os.makedirs(store.namespace_dir)
    data = put(store, pool, KEY, seed=100)
    got = fetch(store, pool, KEY)
    assert got is not None and torch.equal(got, data)


def test_stats_count_hits_and_misses(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    store, pool = open_store()
    put(store, pool, KEY, seed=101)
    assert fetch(store, pool, KEY) is not None
    assert fetch(store, pool, hexkey(5)) is None
    stats = store.get_stats()
    assert (stats["hits"], stats["misses"], stats["writes"]) == (1, 1, 1)
    assert stats["bytes_read"] == stats["bytes_written"] == pool.page_bytes


def test_make_pool_matches_the_child(open_store: Callable[..., tuple[FileStore, HostKVPool]]) -> None:
    _store, pool = open_store()
    assert make_pool().page_bytes == pool.page_bytes
