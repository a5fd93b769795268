"""The AIBrix backend's own behaviour: configuration, page mapping, handles, errors, memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("aibrix_kvcache", reason="aibrix-kvcache is not installed: pip install -e plugins/hicache_aibrix")
import torch
from hicache_aibrix.settings import ENV_PREFIX, parse_settings
from hicache_aibrix.store import AIBrixStore

from hicache_core import BackendConfigError, HiCacheStorageConfig, HostKVPool, LayoutError

OpenStore = Callable[..., tuple[AIBrixStore, HostKVPool]]


@pytest.fixture
def open_store(aibrix_config: Callable[..., HiCacheStorageConfig]) -> Iterator[OpenStore]:
    """Open an AIBrix store with a registered host pool; everything opened is closed afterwards."""
    opened: list[AIBrixStore] = []

    def _open(layout: str = "page_first", config: HiCacheStorageConfig | None = None, **extra: object
              ) -> tuple[AIBrixStore, HostKVPool]:
        store = AIBrixStore(config or aibrix_config(**extra))
        opened.append(store)
        pool = HostKVPool(size=32 * 16, page_size=16, layer_num=2, head_num=2, head_dim=8,
                          dtype=torch.bfloat16, layout=layout)
        store.register_mem_pool_host(pool)
        return store, pool

    yield _open
    for store in opened:
        store.close()


def _random_pages(pool: HostKVPool, n: int, seed: int) -> torch.Tensor:
    """Allocate ``n`` pages of ``pool``, fill them with random bytes, return their token indices."""
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    gen = torch.Generator().manual_seed(seed)
    for page in pool.indices_to_pages(idx):
        raw = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8, generator=gen)
        pool.write_page(page, raw.view(pool.dtype))
    return idx


def _page_bytes(pool: HostKVPool, idx: torch.Tensor) -> list[bytes]:
    return [bytes(pool.read_page(p).view(torch.uint8).numpy()) for p in pool.indices_to_pages(idx)]


def _aibrix_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


# ---------------------------------------------------------------- configuration
def test_environment_is_restored_after_open(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_PREFIX + "L2_CACHE_NAMESPACE", "operator-ns")
    before = _aibrix_env()
    store, _ = open_store(l2_backend="ROCKSDB", namespace="from-extra")
    assert _aibrix_env() == before
    # The extra-config namespace reached AIBrix: it names the RocksDB directory.
    assert any(p.name.startswith("from-extra_") for p in (tmp_path / "rocksdb").iterdir())
    assert store.get_stats()["connector"] == "ROCKSDB"


def test_aibrix_env_vars_are_honoured(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch,
                                      aibrix_config: Callable[..., HiCacheStorageConfig], tmp_path: Path) -> None:
    shfs = tmp_path / "operator-shfs"
    monkeypatch.setenv(ENV_PREFIX + "L2_CACHE_BACKEND", "shfs")
    monkeypatch.setenv(ENV_PREFIX + "SHFS_ROOT", str(shfs))
    config = aibrix_config()
    assert config.extra_config is not None
    config.extra_config.pop("shfs_root")
    store, pool = open_store(config=config)
    assert store.get_stats()["connector"] == "SHFS"
    assert store.capabilities.persistent and store.capabilities.shared
    idx = _random_pages(pool, 2, seed=1)
    assert store.batch_set_v1(["env-a", "env-b"], idx) == [True, True]
    assert len([p for p in shfs.rglob("*") if p.is_file()]) == 2


def test_extra_config_beats_the_environment(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREFIX + "L2_CACHE_BACKEND", "ROCKSDB")
    store, _ = open_store(l2_backend="none")
    assert store.get_stats()["connector"] == "none (L1 memory only)"
    assert not store.capabilities.persistent


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"l2_backend": "FLOPPY"}, "l2_backend"),
        ({"l1_capacity_gb": "lots"}, "l1_capacity_gb"),
        ({"l1_enabled": "maybe"}, "l1_enabled"),
        ({"block_layout": "KVLN"}, "block_layout"),
        ({"ingestion_type": "SOMETIMES"}, "ingestion_type"),
        ({"aibrix_env": {"HOME": "/"}}, "aibrix_env"),
        ({"l1_enabled": False}, "l2_backend"),
        ({"aibrix_env": {ENV_PREFIX + "BLOCK_SIZE": "64"}}, ENV_PREFIX + "BLOCK_SIZE"),
    ],
)
def test_bad_config_names_the_field(extra: dict[str, object], field: str) -> None:
    with pytest.raises(BackendConfigError, match=field):
        AIBrixStore(HiCacheStorageConfig(extra_config=extra))


def test_token_validation_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREFIX + "TOKEN_VALIDATION_ENABLED", "1")
    with pytest.raises(BackendConfigError, match="TOKEN_VALIDATION_ENABLED"):
        parse_settings({})


def test_mla_is_refused(aibrix_config: Callable[..., HiCacheStorageConfig]) -> None:
    config = aibrix_config()
    config.is_mla_model = True
    with pytest.raises(LayoutError, match="MLA"):
        AIBrixStore(config)
    store = AIBrixStore(aibrix_config())
    mla_pool = HostKVPool(size=64, page_size=16, layer_num=2, head_num=1, head_dim=16, is_mla=True)
    with pytest.raises(LayoutError, match="MLA"):
        store.register_mem_pool_host(mla_pool)
    assert AIBrixStore.capabilities.mla is False


def test_io_before_register_says_what_to_do(aibrix_config: Callable[..., HiCacheStorageConfig]) -> None:
    store = AIBrixStore(aibrix_config())
    with pytest.raises(Exception, match="register_mem_pool_host"):
        store.exists("k")


# ---------------------------------------------------------------- page mapping
@pytest.mark.parametrize("block_layout", ["NCLD", "LCND"])
def test_pages_are_stored_in_aibrix_block_layout(open_store: OpenStore, block_layout: str) -> None:
    store, pool = open_store(layout="page_first", block_layout=block_layout)
    idx = _random_pages(pool, 1, seed=2)
    assert store.batch_set_v1(["layout-key"], idx) == [True]
    manager = store._manager
    ntokens, handle = manager.acquire(None, store._hashes(["layout-key"])).get()
    try:
        block = handle.to_tensors()[0]
        page = pool.get_data_page(int(idx[0]), flat=False).view(torch.uint8)  # (2, P, L, H, D bytes)
        expected = page.permute(1, 0, 2, 3, 4) if block_layout == "NCLD" else page.permute(2, 0, 1, 3, 4)
        assert ntokens == pool.page_size
        assert tuple(block.shape) == tuple(expected.shape)  # AIBrix's block, in bytes
        assert torch.equal(block.view(torch.uint8), expected.contiguous().view(torch.uint8))
    finally:
        handle.release()


def test_a_page_written_from_another_layout_is_a_miss(open_store: OpenStore) -> None:
    """Keys carry the pool's page format (its byte order included): a reader of another layout
    misses, even though the block itself is layout-independent; a miss, never a guess."""
    writer, src = open_store(layout="page_first", l2_backend="ROCKSDB")
    idx = _random_pages(src, 3, seed=3)
    keys = ["x0", "x1", "x2"]
    assert writer.batch_set_v1(keys, idx) == [True] * 3
    writer.close()
    for layout in ("layer_first", "page_first_direct", "page_head"):
        reader, dst = open_store(layout=layout, l2_backend="ROCKSDB")
        out = _random_pages(dst, 3, seed=30)
        before = _page_bytes(dst, out)
        assert reader.exists_many(keys) == [False] * 3
        assert reader.batch_get_v1(keys, out) == [False] * 3
        assert _page_bytes(dst, out) == before
        reader.close()
    again, pool = open_store(layout="page_first", l2_backend="ROCKSDB")
    out = pool.alloc(3 * pool.page_size)
    assert out is not None
    assert again.batch_get_v1(keys, out) == [True] * 3


def test_long_model_names_still_make_valid_file_names(open_store: OpenStore,
                                                       aibrix_config: Callable[..., HiCacheStorageConfig]) -> None:
    config = aibrix_config(l2_backend="SHFS", l1_enabled=False)
    config.model_name = "org/" + "m" * 300
    store, pool = open_store(config=config)
    idx = _random_pages(pool, 1, seed=4)
    assert store.batch_set_v1(["k" * 64], idx) == [True]
    assert store.get("k" * 64) is not None


# ---------------------------------------------------------------- handles and errors
def _allocator_in_use(store: AIBrixStore) -> int:
    """Bytes AIBrix's allocator has handed out and not had back (L2-only mode keeps none)."""
    return len(store._manager._allocator)


def test_handles_are_released_on_hits_misses_and_copy_errors(open_store: OpenStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, pool = open_store(l2_backend="ROCKSDB", l1_enabled=False)
    idx = _random_pages(pool, 4, seed=5)
    keys = ["h0", "h1", "h2", "h3"]
    assert store.batch_set_v1(keys[:3], idx[: 3 * pool.page_size]) == [True] * 3
    assert _allocator_in_use(store) == 0
    out = pool.alloc(4 * pool.page_size)
    assert out is not None
    assert store.batch_get_v1(keys, out) == [True, True, True, False]
    assert _allocator_in_use(store) == 0

    # A copy that fails half-way through a handle: that page is a miss, the handle is released.
    mapper = store._mapper
    assert mapper is not None
    real = mapper.pool_page
    bad_page = pool.indices_to_pages(out)[1]

    def failing(page: int) -> torch.Tensor:
        if page == bad_page:
            raise RuntimeError("injected copy failure")
        return real(page)

    monkeypatch.setattr(mapper, "pool_page", failing)
    assert store.batch_get_v1(keys, out) == [True, False, True, False]
    assert _allocator_in_use(store) == 0
    assert "injected copy failure" in store.get_stats()["last_error"]
    assert store.batch_set_v1(["h4", "h5"], torch.cat([out[: pool.page_size], out[pool.page_size : 2 * pool.page_size]])) == [True, False]
    assert _allocator_in_use(store) == 0
    stats = store.get_stats()
    assert stats["handles_acquired"] == stats["handles_released"] > 0
    assert stats["get_errors"] == 1 and stats["set_errors"] == 1


def test_connector_failures_are_per_page_results(open_store: OpenStore, tmp_path: Path) -> None:
    store, pool = open_store(l2_backend="SHFS", l1_enabled=False)
    idx = _random_pages(pool, 2, seed=6)
    assert store.batch_set_v1(["ok0"], idx[: pool.page_size]) == [True]
    # Break the store for real. A stored page file of the wrong size fails its read ...
    (stored,) = [p for p in (tmp_path / "shfs").rglob("*") if p.is_file()]
    stored.write_bytes(b"short")
    out = pool.alloc(2 * pool.page_size)
    assert out is not None
    assert store.batch_get_v1(["ok0", "never"], out) == [False, False]
    # AIBrix's batched read (mget) reports a failed read as "not found": a miss, not an error.
    assert store.get_stats()["pages_missed"] == 2
    # ... and a connector directory that became a file fails every write.
    conn_dir = next((tmp_path / "shfs").iterdir())
    shutil.rmtree(conn_dir)
    conn_dir.write_bytes(b"not a directory")
    assert store.batch_set_v1(["new0"], idx[pool.page_size :]) == [False]
    assert store.set("new1", pool.read_page(0)) is False
    stats = store.get_stats()
    assert stats["set_errors"] >= 2
    assert stats["handles_acquired"] == stats["handles_released"]


def test_bad_targets_and_values_are_per_page_results(open_store: OpenStore) -> None:
    store, pool = open_store()
    page = pool.read_page(0)
    assert store.set("v", page) is True
    assert store.set("w", torch.zeros(3)) is False
    got = store.batch_get(["v", "v"], [torch.zeros(3), pool.get_dummy_flat_data_page()])
    assert got[0] is None and got[1] is not None
    assert store.get_stats()["set_errors"] == 1 and store.get_stats()["get_errors"] == 1


def test_delete_reaches_l2(open_store: OpenStore) -> None:
    store, pool = open_store(l2_backend="ROCKSDB")
    assert store.set("d", pool.read_page(0))
    assert store.delete("d") is True
    store.close()
    again, _ = open_store(l2_backend="ROCKSDB")
    assert again.exists("d") is False


def test_rocksdb_is_shared_in_process_and_another_process_gets_a_clear_error(
        open_store: OpenStore, aibrix_config: Callable[..., HiCacheStorageConfig]) -> None:
    """RocksDB admits one opener per directory: backends of one process share one AIBrix
    manager (a re-attach, a twin), and another process is told what to do."""
    first, pool = open_store(l2_backend="ROCKSDB", l1_enabled=False)
    second, _ = open_store(l2_backend="ROCKSDB", l1_enabled=False)
    assert first._manager is second._manager
    assert first.batch_set_v1(["shared0"], _random_pages(pool, 1, seed=12)) == [True]
    assert second.exists("shared0") is True
    first.close()
    assert second.exists("shared0") is True  # the last user closes the manager, not the first
    extra = aibrix_config(l2_backend="ROCKSDB", l1_enabled=False).extra_config
    script = textwrap.dedent(f"""
        import json, torch
        from hicache_aibrix.store import AIBrixStore
        from hicache_core import BackendConfigError, HiCacheStorageConfig, HostKVPool
        store = AIBrixStore(HiCacheStorageConfig(model_name="m", extra_config=json.loads({json.dumps(json.dumps(extra))})))
        pool = HostKVPool(size=32 * 16, page_size=16, layer_num=2, head_num=2, head_dim=8, dtype=torch.bfloat16)
        try:
            store.register_mem_pool_host(pool)
        except BackendConfigError as exc:
            print("REFUSED", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in out.stdout and "rocksdb directory" in out.stdout, out.stdout + out.stderr


def test_pages_only_in_l2_are_found_through_a_fresh_l1(open_store: OpenStore) -> None:
    """AIBrix's default double-get threshold would hide these; the plugin's default must not."""
    writer, pool = open_store(l2_backend="SHFS")
    idx = _random_pages(pool, 3, seed=7)
    assert writer.batch_set_v1(["l0", "l1", "l2"], idx) == [True] * 3
    writer.close()
    reader, pool2 = open_store(l2_backend="SHFS")
    assert reader.exists_many(["l0", "zz", "l2"]) == [True, False, True]
    assert reader.batch_exists(["l0", "l1", "l2", "zz"]) == 3
    out = pool2.alloc(3 * pool2.page_size)
    assert out is not None
    assert reader.batch_get_v1(["l0", "l1", "l2"], out) == [True] * 3
    assert _page_bytes(pool2, out) == _page_bytes(pool, idx)


# ---------------------------------------------------------------- memory
def test_pinned_memory_follows_cuda(open_store: OpenStore) -> None:
    store, _ = open_store()
    cuda = torch.cuda.is_available()
    assert store.get_stats()["pinned_memory"] is cuda
    assert store._manager._allocator.pin_memory is cuda


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to check pinned buffers")
def test_aibrix_buffers_are_pinned_with_cuda(open_store: OpenStore) -> None:
    store, _ = open_store()
    assert all(slab.is_pinned() for slab in store._manager._allocator.slabs)


def test_importing_aibrix_leaves_the_event_loop_policy_alone(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import asyncio, torch
        from hicache_core import HiCacheStorageConfig, HostKVPool
        from hicache_aibrix.store import AIBrixStore
        before = type(asyncio.get_event_loop_policy()).__name__
        store = AIBrixStore(HiCacheStorageConfig(extra_config={"l1_capacity_gb": 0.05}))
        store.register_mem_pool_host(HostKVPool(64, 16, 1, 1, 8))
        after = type(asyncio.get_event_loop_policy()).__name__
        store.close()
        assert before == after, (before, after)
        print("policy", after)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "uvloop" not in done.stdout.split("policy", 1)[1]


# ---------------------------------------------------------------- remote connectors
REMOTE_SERVERS = {
    "INFINISTORE": "an InfiniStore server (AIBRIX_KV_CACHE_OL_INFINISTORE_HOST_ADDR/_SERVICE_PORT)",
    "HPKV": "an HPKV server (AIBRIX_KV_CACHE_OL_HPKV_REMOTE_ADDR/_REMOTE_PORT)",
    "PRISKV": "a PrisKV server (AIBRIX_KV_CACHE_OL_PRISKV_REMOTE_ADDR/_REMOTE_PORT)",
    "EIC": "an EIC cluster (AIBRIX_KV_CACHE_OL_EIC_CONFIG_FILE)",
}


@pytest.mark.parametrize("connector", sorted(REMOTE_SERVERS))
def test_remote_connector_roundtrip(connector: str, open_store: OpenStore) -> None:
    """Runs when HICACHE_AIBRIX_REMOTE names this connector and AIBrix's variables point at its server."""
    if os.environ.get("HICACHE_AIBRIX_REMOTE", "").upper() != connector:
        pytest.skip(f"{connector} needs {REMOTE_SERVERS[connector]}; set HICACHE_AIBRIX_REMOTE={connector} to run")
    store, pool = open_store(l2_backend=connector, l1_enabled=False)
    idx = _random_pages(pool, 2, seed=8)
    assert store.batch_set_v1(["r0", "r1"], idx) == [True, True]
    out = pool.alloc(2 * pool.page_size)
    assert out is not None
    assert store.batch_get_v1(["r0", "r1"], out) == [True, True]
    assert _page_bytes(pool, out) == _page_bytes(pool, idx)


@pytest.mark.parametrize("connector", sorted(REMOTE_SERVERS))
def test_remote_connector_without_its_client_says_what_it_needs(connector: str, open_store: OpenStore) -> None:
    module = {"INFINISTORE": "infinistore", "HPKV": "hpkv", "PRISKV": "priskv", "EIC": "eic"}[connector]
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"the {module} client is installed here; this checks the message when it is not")
    with pytest.raises(BackendConfigError, match=f"{connector} connector needs"):
        open_store(l2_backend=connector)


def test_calls_after_close_are_misses_and_health_check_fails(open_store: OpenStore) -> None:
    store, pool = open_store(l2_backend="ROCKSDB")
    idx = _random_pages(pool, 2, seed=9)
    assert store.batch_set_v1(["c0", "c1"], idx) == [True, True]
    store.close()
    assert store.batch_get_v1(["c0", "c1"], idx) == [False, False]
    assert store.batch_set_v1(["c2"], idx[: pool.page_size]) == [False]
    assert store.exists("c0") is False and store.batch_exists(["c0"]) == 0
    assert store.get("c0") is None and store.set("c3", pool.read_page(0)) is False
    assert store.delete("c0") is False
    assert store.get_stats()["calls_after_close"] == 7
    with pytest.raises(Exception, match="closed"):
        store.health_check()


def test_closing_gives_the_connector_files_back(tmp_path: Path) -> None:
    """AIBrix leaves its connector's files to the garbage collector; close() collects, so a
    process that attaches and detaches stores does not run out of file descriptors. Run in a
    fresh interpreter: pytest's log capture keeps records (and what they reference) alive."""
    script = textwrap.dedent(f"""
        import os
        from hicache_aibrix.store import AIBrixStore
        from hicache_core import HiCacheStorageConfig, HostKVPool
        extra = {{"l1_capacity_gb": 0.05, "l2_backend": "ROCKSDB", "rocksdb_root": {str(tmp_path / "r")!r}}}
        def open_close():
            store = AIBrixStore(HiCacheStorageConfig(model_name="m", extra_config=extra))
            store.register_mem_pool_host(HostKVPool(size=512, page_size=16, layer_num=2, head_num=2, head_dim=8))
            store.close()
        open_close()  # first-use descriptors (thread pools, event loops) are not a leak
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(8):
            open_close()
        print("FDS", before, len(os.listdir("/proc/self/fd")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FDS")), "")
    assert line, out.stdout + out.stderr
    _, before, after = line.split()
    assert int(after) <= int(before) + 1, line
