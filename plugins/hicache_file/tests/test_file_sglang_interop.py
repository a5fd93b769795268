"""One folder, two engines: the real SGLang 0.5.23 ``HiCacheFile`` and hicache-file's ``sglang`` scheme
read each other's pages byte-equal, from SGLang's own host pools (and hicache's); a page of
another layout or dtype is never served. Skipped, saying why, when sglang is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

from hicache_file.manifest import manifest_path  # noqa: E402
from hicache_file.store import FileStore  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheFile  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import PoolName as SGLPoolName  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import PoolTransfer as SGLPoolTransfer  # noqa: E402
from sglang_real.sglang_pools import (  # noqa: E402
    fill_pages,
    read_pages,
    sglang_host_pool,
    sglang_storage_config,
)

from hicache_core import HiCacheStorageConfig, HostKVPool  # noqa: E402
from hicache_core.keys import page_hashes  # noqa: E402
from hicache_core.memory.state_pool import HostStatePool  # noqa: E402
from hicache_core.spec.pools import PoolHitPolicy, PoolName, PoolTransfer  # noqa: E402

CASES = [("mha", "page_first"), ("mha", "layer_first"), ("mha", "page_head"), ("mla", "page_first"),
         ("mla", "layer_first")]
N = 3


@pytest.fixture(autouse=True)
def _no_sglang_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", raising=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "shared-l3"


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    backends: list[Any] = []
    yield backends
    for b in backends:
        b.close()


def _sglang(folder: Path, kind: str, layout: str, pool: Any) -> Any:
    cfg = sglang_storage_config(kind, layout, extra_config={"file_storage_path": str(folder)})
    store = HiCacheFile(cfg)
    store.register_mem_pool_host(pool)
    store.register_mem_host_pool_v2(pool, SGLPoolName.KV)
    return store


def _hicache(folder: Path, kind: str, pool: Any, opened: list[Any], **extra: Any) -> Any:
    # The same model and shard as sglang_storage_config(): SGLang's config, read by hicache.
    cfg = HiCacheStorageConfig.from_any(sglang_storage_config(kind, "page_first"))
    cfg.extra_config = {"scheme": "sglang", "file_storage_path": str(folder), **extra}
    store = FileStore(cfg)
    store.register_mem_pool_host(pool)
    store.on_host_pools_registered()
    opened.append(store)
    return store


def _keys(seed: int) -> list[str]:
    return page_hashes(list(range(seed, seed + N * 4)), 4)


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{lo}" for k, lo in CASES])
def test_sglang_writes_and_hicache_reads_byte_equal(folder: Path, opened: list[Any], kind: str, layout: str) -> None:
    keys = _keys(10)
    src = sglang_host_pool(kind, layout)
    idx, expected = fill_pages(src, N, seed=1)
    sgl = _sglang(folder, kind, layout, src)
    # SGLang's own generic write path: its flat pages, through HiCacheFile.batch_set.
    values = [src.get_data_page(int(idx[i * src.page_size]), flat=True) for i in range(N)]
    assert sgl.batch_set(keys, values) is True
    assert not Path(manifest_path(str(folder), "kv", sgl.config_suffix)).exists()
    # An unmarked SGLang folder: served once the operator declares the writer's format.
    dst = sglang_host_pool(kind, layout)
    mine = _hicache(folder, kind, dst, opened, sglang_layout=layout, sglang_dtype="bfloat16")
    assert mine.suffix == sgl.config_suffix
    didx = dst.alloc(N * dst.page_size)
    assert mine.batch_get_v1(keys, didx) == [True] * N
    assert read_pages(dst, didx) == expected
    if kind == "mha":  # and into hicache's own host pool of that layout, the same bytes
        hpool = HostKVPool(16 * 4, 4, 2, 2, 8, dtype=torch.bfloat16, layout=layout, pin_memory=False)
        ours = _hicache(folder, kind, hpool, opened)
        hidx = hpool.pages_to_indices([7, 2, 5])
        assert ours.batch_get_v1(keys, hidx) == [True] * N
        assert [bytes(hpool.read_page(p).view(torch.uint8).numpy()) for p in (7, 2, 5)] == expected


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{lo}" for k, lo in CASES])
def test_hicache_writes_and_sglang_reads_byte_equal(folder: Path, opened: list[Any], kind: str, layout: str) -> None:
    keys = _keys(20)
    src = sglang_host_pool(kind, layout)
    idx, expected = fill_pages(src, N, seed=2)
    mine = _hicache(folder, kind, src, opened)
    assert mine.batch_set_v1(keys, idx) == [True] * N
    dst = sglang_host_pool(kind, layout)
    sgl = _sglang(folder, kind, layout, dst)
    assert sgl.batch_exists(keys) == N
    got = sgl.batch_get(keys, [dst.get_dummy_flat_data_page() for _ in keys])
    assert [bytes(g.contiguous().view(torch.uint8).numpy()) for g in got] == expected
    # SGLang's v2 read into its own pool lands the same bytes.
    didx = dst.alloc(N * dst.page_size)
    res = sgl.batch_get_v2([SGLPoolTransfer(SGLPoolName.KV, host_indices=didx, keys=keys)])
    assert res == {SGLPoolName.KV: [True] * N}
    assert read_pages(dst, didx) == expected


def test_sglang_pages_of_another_layout_or_dtype_are_never_served(folder: Path, opened: list[Any]) -> None:
    keys = _keys(30)
    # hicache marks the folder first: page_first bf16.
    first = sglang_host_pool("mha", "page_first")
    _hicache(folder, "mha", first, opened)
    # An SGLang server with another layout writes into it anyway (SGLang does not read manifests).
    wrong = sglang_host_pool("mha", "layer_first")
    idx, _ = fill_pages(wrong, N, seed=3)
    sgl = _sglang(folder, "mha", "layer_first", wrong)
    assert sgl.batch_set(keys, [wrong.get_data_page(int(idx[i * 4]), flat=True) for i in range(N)])
    # A layer_first hicache pool: the manifest says page_first: a miss, counted.
    reader_pool = sglang_host_pool("mha", "layer_first")
    reader = _hicache(folder, "mha", reader_pool, opened)
    assert reader.batch_get_v1(keys, reader_pool.alloc(N * 4)) == [False] * N
    assert reader.get_stats()["format_mismatch"] == N
    # An fp16 SGLang server's unmarked pages, declared as bf16 by mistake for a bf16 pool: the
    # declaration must match the pool, and a declared fp16 does not match a bf16 pool: no hit.
    other = folder.parent / "fp16-l3"
    fp16 = sglang_host_pool("mha", "page_first", dtype=torch.float16)
    idx16, _ = fill_pages(fp16, N, seed=4)
    sgl16 = _sglang(other, "mha", "page_first", fp16)
    assert sgl16.batch_set(keys, [fp16.get_data_page(int(idx16[i * 4]), flat=True) for i in range(N)])
    bf16_pool = sglang_host_pool("mha", "page_first")
    honest = _hicache(other, "mha", bf16_pool, opened, sglang_layout="page_first", sglang_dtype="float16")
    assert honest.batch_get_v1(keys, bf16_pool.alloc(N * 4)) == [False] * N
    assert honest.get_stats()["format_mismatch"] == N


def test_v2_mamba_sidecar_written_by_sglang_is_read_by_hicache(folder: Path, opened: list[Any]) -> None:
    keys = _keys(40)
    kv = sglang_host_pool("mha", "page_first")
    state = HostStatePool(8, (3, 5), dtype=torch.float32)
    state.kv_buffer.copy_(torch.randn(state.kv_buffer.shape, generator=torch.Generator().manual_seed(5)))
    # hicache attaches first: the fresh folder's manifests (KV and mamba) are written now.
    reader_kv = sglang_host_pool("mha", "page_first")
    reader_state = HostStatePool(8, (3, 5), dtype=torch.float32)
    cfg = HiCacheStorageConfig.from_any(sglang_storage_config("mha", "page_first"))
    cfg.extra_config = {"scheme": "sglang", "file_storage_path": str(folder)}
    mine = FileStore(cfg)
    opened.append(mine)
    mine.register_mem_pool_host(reader_kv)
    mine.register_mem_host_pool_v2(reader_state, PoolName.MAMBA)
    mine.on_host_pools_registered()
    # SGLang's own v2 write: KV pages and a Mamba state at the last page.
    idx, expected = fill_pages(kv, N, seed=6)
    sgl = _sglang(folder, "mha", "page_first", kv)
    sgl.register_mem_host_pool_v2(state, SGLPoolName.MAMBA)
    res = sgl.batch_set_v2([
        SGLPoolTransfer(SGLPoolName.KV, host_indices=idx, keys=keys),
        SGLPoolTransfer(SGLPoolName.MAMBA, host_indices=torch.tensor([6]), keys=keys[-1:],
                        hit_policy="trailing_pages"),
    ])
    assert res == {SGLPoolName.KV: [True] * N, SGLPoolName.MAMBA: [True]}
    found = mine.batch_exists_v2(keys, [PoolTransfer(PoolName.MAMBA, keys=keys[-1:],
                                                     hit_policy=PoolHitPolicy.TRAILING_PAGES)])
    assert found.kv_hit_pages == N and found.restorable_prefix_pages == [N]
    kidx = reader_kv.alloc(N * 4)
    got = mine.batch_get_v2([
        PoolTransfer(PoolName.KV, host_indices=kidx, keys=keys),
        PoolTransfer(PoolName.MAMBA, host_indices=torch.tensor([2]), keys=keys[-1:]),
    ])
    assert got == {"kv": [True] * N, "mamba": [True]}
    assert read_pages(reader_kv, kidx) == expected
    assert torch.equal(reader_state.kv_buffer[2], state.kv_buffer[6])
