"""Scheme ``sglang``: SGLang HiCacheFile's file names and raw bytes, and the format-manifest rule
(hicache_file.manifest) that keeps a page of another layout, dtype or shard from being served."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hicache_file.manifest import manifest_path
from hicache_file.store import FileStore

from hicache_core import BackendConfigError, HiCacheStorageConfig, HostKVPool
from hicache_core.memory.pages import page_format, read_flat_page

KEYS = [f"{i:02x}" + "a" * 62 for i in range(3)]
Open = Callable[..., tuple[Any, HostKVPool]]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "sglang-l3"


@pytest.fixture
def open_store(folder: Path) -> Iterator[Open]:
    opened: list[Any] = []

    def _open(layout: str = "page_first", dtype: torch.dtype = torch.bfloat16, is_mla: bool = False,
              page_size: int = 4, extra: dict[str, Any] | None = None, **config: Any) -> tuple[Any, HostKVPool]:
        cfg = HiCacheStorageConfig(
            model_name="org/m", is_mla_model=is_mla,
            extra_config={"scheme": "sglang", "file_storage_path": str(folder), **(extra or {})}, **config,
        )
        store = FileStore(cfg)
        pool = HostKVPool(16 * page_size, page_size, 2, 2, 8, dtype=dtype, layout=layout, is_mla=is_mla,
                          pin_memory=False)
        store.register_mem_pool_host(pool)
        opened.append(store)
        return store, pool

    yield _open
    for s in opened:
        s.close()


def _fill(pool: HostKVPool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=gen).to(pool.dtype))


def _flat(pool: HostKVPool, page: int) -> bytes:
    return bytes(read_flat_page(pool, page).view(torch.uint8).numpy())


def _write_raw_like_sglang(folder: Path, pool: HostKVPool, suffix: str, pages: list[int]) -> None:
    """What SGLang's HiCacheFile leaves: ``<key><suffix>.bin`` raw flat pages, no manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, page in zip(KEYS, pages):
        (folder / f"{key}{suffix}.bin").write_bytes(_flat(pool, page))


def test_files_are_sglang_names_and_raw_flat_pages(open_store: Open, folder: Path) -> None:
    store, pool = open_store()
    _fill(pool, 1)
    assert store.batch_set_v1(KEYS, pool.pages_to_indices([4, 2, 9])) == [True] * 3
    assert store.suffix == "_org-m_0_1"
    for key, page in zip(KEYS, [4, 2, 9]):
        assert (folder / f"{key}_org-m_0_1.bin").read_bytes() == _flat(pool, page)
    manifest = json.loads(Path(manifest_path(str(folder), "kv", "_org-m_0_1")).read_text())
    assert manifest["format"] == page_format(pool).tag() and manifest["source"] == "adopted"
    assert store.batch_get_v1(KEYS, pool.pages_to_indices([0, 1, 3])) == [True] * 3
    assert [_flat(pool, p) for p in (0, 1, 3)] == [_flat(pool, p) for p in (4, 2, 9)]


@pytest.mark.parametrize(
    "reader",
    [{"layout": "layer_first"}, {"layout": "page_head"}, {"dtype": torch.float16}, {"page_size": 8}],
    ids=["layout", "page_head", "dtype", "page_size"],
)
def test_a_pool_of_another_format_gets_misses_and_refused_writes(open_store: Open, reader: dict[str, Any]) -> None:
    writer, wpool = open_store()
    _fill(wpool, 2)
    assert writer.batch_set_v1(KEYS, wpool.pages_to_indices([0, 1, 2])) == [True] * 3
    other, pool = open_store(**reader)
    assert other.exists(KEYS[0]) is False and other.batch_exists(KEYS) == 0
    assert other.batch_get_v1(KEYS, pool.pages_to_indices([3, 4, 5])) == [False] * 3
    assert other.get(KEYS[0], pool.get_dummy_flat_data_page()) is None
    assert other.batch_set_v1(["ff" * 32], pool.pages_to_indices([6])) == [False]
    stats = other.get_stats()
    assert stats["format_mismatch"] >= 3 and stats["hits"] == 0


def test_attn_cp_ranks_and_mla_have_their_own_files(open_store: Open, folder: Path) -> None:
    cp0, p0 = open_store(attn_cp_rank=0, attn_cp_size=2)
    cp1, p1 = open_store(attn_cp_rank=1, attn_cp_size=2)
    _fill(p0, 3)
    assert cp0.batch_set_v1(KEYS[:1], p0.pages_to_indices([0])) == [True]
    assert (folder / f"{KEYS[0]}_org-m_0_1_cp0_2.bin").exists()
    assert cp1.batch_get_v1(KEYS[:1], p1.pages_to_indices([0])) == [False]
    mla, pm = open_store(is_mla=True, tp_rank=0, tp_size=2)
    _fill(pm, 4)
    assert mla.batch_set_v1(KEYS[:1], pm.pages_to_indices([2])) == [True]
    assert (folder / f"{KEYS[0]}_org-m.bin").read_bytes() == _flat(pm, 2)


def test_unmarked_sglang_pages_need_the_writers_declared_format(open_store: Open, folder: Path) -> None:
    source = HostKVPool(64, 4, 2, 2, 8, dtype=torch.bfloat16, layout="layer_first", pin_memory=False)
    _fill(source, 5)
    _write_raw_like_sglang(folder, source, "_org-m_0_1", [1, 2, 3])
    # No manifest and no declaration: their dtype and layout are unknown: nothing is served or written.
    blind, pool = open_store(layout="layer_first")
    assert blind.batch_get_v1(KEYS, pool.pages_to_indices([0, 1, 2])) == [False] * 3
    assert blind.batch_set_v1(["ff" * 32], pool.pages_to_indices([3])) == [False]
    assert blind.get_stats()["format_unknown"] >= 4
    assert not Path(manifest_path(str(folder), "kv", "_org-m_0_1")).exists()
    # A declaration that is not this pool's format: still nothing.
    wrong, pool = open_store(layout="layer_first", extra={"sglang_layout": "page_first", "sglang_dtype": "bfloat16"})
    assert wrong.batch_get_v1(KEYS, pool.pages_to_indices([0, 1, 2])) == [False] * 3
    assert wrong.get_stats()["format_mismatch"] == 3
    # The right declaration: served byte-equal, and recorded for every later reader.
    right, pool = open_store(layout="layer_first", extra={"sglang_layout": "layer_first", "sglang_dtype": "bfloat16"})
    assert right.batch_get_v1(KEYS, pool.pages_to_indices([5, 6, 7])) == [True] * 3
    assert [_flat(pool, p) for p in (5, 6, 7)] == [_flat(source, p) for p in (1, 2, 3)]
    manifest = json.loads(Path(manifest_path(str(folder), "kv", "_org-m_0_1")).read_text())
    assert manifest["source"] == "declared" and manifest["format"] == page_format(pool).tag()
    later, pool = open_store(layout="page_first")  # the manifest now rules out other layouts
    assert later.batch_get_v1(KEYS, pool.pages_to_indices([0, 1, 2])) == [False] * 3


def test_a_file_of_another_size_is_a_miss_and_kept(open_store: Open, folder: Path) -> None:
    store, pool = open_store()
    _fill(pool, 6)
    assert store.batch_set_v1(KEYS[:1], pool.pages_to_indices([0])) == [True]
    path = folder / f"{KEYS[0]}_org-m_0_1.bin"
    path.write_bytes(path.read_bytes()[:-1])
    assert store.exists(KEYS[0]) is False
    assert store.batch_get_v1(KEYS[:1], pool.pages_to_indices([1])) == [False]
    assert store.get_stats()["wrong_size"] == 1 and path.exists()


def test_lru_bound_and_restart(open_store: Open, folder: Path) -> None:
    store, pool = open_store(extra={"max_pages": 2})
    _fill(pool, 7)
    keys = [f"{i:02x}" + "b" * 62 for i in range(3)]
    for i, key in enumerate(keys):
        assert store.batch_set_v1([key], pool.pages_to_indices([i])) == [True]
    assert store.exists_many(keys) == [False, True, True]
    again, _ = open_store(extra={"max_pages": 1})  # a smaller bound on restart evicts the oldest
    assert again.exists_many(keys) == [False, False, True]
    assert len(list(folder.glob("*.bin"))) == 1


def test_no_pool_no_service(folder: Path) -> None:
    store = FileStore(HiCacheStorageConfig(model_name="m", extra_config={"scheme": "sglang", "path": str(folder)}))
    assert store.set(KEYS[0], torch.zeros(8)) is False
    assert store.get(KEYS[0]) is None
    assert store.get_stats()["format_unknown"] == 1


def test_scheme_keys_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="scheme"):
        FileStore(HiCacheStorageConfig(extra_config={"scheme": "raw", "path": str(tmp_path)}))
    with pytest.raises(BackendConfigError, match="sglang_layout"):
        FileStore(HiCacheStorageConfig(extra_config={"scheme": "sglang", "sglang_layout": "sideways"}))
    with pytest.raises(BackendConfigError, match="sglang_dtype"):
        FileStore(HiCacheStorageConfig(extra_config={"scheme": "sglang", "sglang_dtype": "float7"}))


def test_segment_scheme_missing_is_a_clear_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "hicache_file.segment.store", None)  # as if it were not installed
    with pytest.raises(BackendConfigError, match=r"scheme .segment. needs the module hicache_file\.segment"):
        FileStore(HiCacheStorageConfig(extra_config={"scheme": "segment", "path": str(tmp_path)}))


def test_a_dead_writers_temporary_file_is_removed_on_open(open_store: Open, folder: Path) -> None:
    folder.mkdir(parents=True)
    dead = folder / ".hicache-999999999-0.tmp"  # no process has that id
    dead.write_bytes(b"half a page")
    store, _ = open_store()
    assert not dead.exists() and store.get_stats()["stale_tmp_removed"] == 1
