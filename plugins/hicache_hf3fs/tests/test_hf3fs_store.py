"""The hf3fs backend's own behaviour: modes, layout, MLA, failures as values, persistence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hf3fs_testutil import ServiceProcess, start_metadata_service
from hicache_hf3fs.client import Item
from hicache_hf3fs.file_client import PlainFileClient
from hicache_hf3fs.store import Hf3fsStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.plugins.factory import create_backend
from hicache_core.spec.config import HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_core.testing.pages import fill_random_pages, read_page_bytes

SHAPE = {"page_size": 16, "layer_num": 2, "head_num": 2, "head_dim": 8, "dtype": torch.bfloat16}


def make_pool(layout: str = "page_first", is_mla: bool = False, pages: int = 32) -> HostKVPool:
    return HostKVPool(size=pages * 16, layout=layout, is_mla=is_mla, **SHAPE)  # type: ignore[arg-type]


def config(prefix: Path, tp_rank: int = 0, tp_size: int = 1, is_mla: bool = False, **extra: Any) -> HiCacheStorageConfig:
    base = {"file_path_prefix": str(prefix), "file_size": 1 << 20, "numjobs": 2, "client": "file"}
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, is_mla_model=is_mla, model_name="m", extra_config={**base, **extra}
    )


@pytest.fixture
def opened() -> Iterator[list[Hf3fsStore]]:
    backends: list[Hf3fsStore] = []
    yield backends
    for b in backends:
        b.close()


@pytest.fixture
def open_store(opened: list[Hf3fsStore]) -> Callable[..., tuple[Hf3fsStore, HostKVPool]]:
    def _open(cfg: HiCacheStorageConfig, pool: HostKVPool | None = None) -> tuple[Hf3fsStore, HostKVPool]:
        backend = Hf3fsStore(cfg)
        opened.append(backend)
        pool = pool if pool is not None else make_pool(is_mla=cfg.is_mla_model)
        backend.register_mem_pool_host(pool)
        return backend, pool

    return _open


def test_stats_say_plain_file_is_not_3fs(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    backend, _ = open_store(config(tmp_path / "kv"))
    stats = backend.get_stats()
    assert stats["mode"] == "plain-file (not 3FS)"
    assert stats["on_3fs"] is False and stats["client"]["client"] == "file"
    assert stats["metadata"]["metadata"] == "local"
    assert Path(stats["file_path"]) == tmp_path / "kv.0.bin"
    assert (tmp_path / "kv.0.bin").stat().st_size == 1 << 20  # pre-sized


def test_non_3fs_path_needs_an_opt_in(tmp_path: Path, opened: list[Hf3fsStore]) -> None:
    cfg = config(tmp_path / "kv", client="auto")
    with pytest.raises(BackendConfigError, match=r"not on a 3FS mount.*allow_non_3fs"):
        Hf3fsStore(cfg)
    backend = Hf3fsStore(config(tmp_path / "kv", client="auto", allow_non_3fs=True))
    opened.append(backend)
    assert backend.client_kind == "file" and backend.mode == "plain-file (not 3FS)"


def test_usrbio_client_refused_off_3fs(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match=r"client is 'usrbio' but .* not on a 3FS mount"):
        Hf3fsStore(config(tmp_path / "kv", client="usrbio"))


def test_file_too_small_for_one_page(tmp_path: Path, opened: list[Hf3fsStore]) -> None:
    backend = Hf3fsStore(config(tmp_path / "kv", file_size=100))
    opened.append(backend)
    with pytest.raises(BackendConfigError, match="file_size"):
        backend.register_mem_pool_host(make_pool())


def test_pages_sit_at_fixed_slot_offsets_of_the_rank_file(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    backend, pool = open_store(config(tmp_path / "kv", tp_rank=1, tp_size=2))
    idx, expected = fill_random_pages(pool, 3, seed=1)
    keys = ["k0", "k1", "k2"]
    assert backend.batch_set_v1(keys, idx) == [True] * 3
    refs = backend.metadata.lookup([backend.page_key(k) for k in keys])
    raw = (tmp_path / "kv.1.bin").read_bytes()
    pb = pool.page_bytes
    for ref, want in zip(refs, expected):
        assert ref is not None
        assert raw[ref.slot * pb : (ref.slot + 1) * pb] == want


def test_mla_ranks_share_rank0_file_and_only_rank0_writes(
    tmp_path: Path, metadata_service: ServiceProcess, open_store: Callable[..., Any]
) -> None:
    url = metadata_service.url
    rank0, pool0 = open_store(config(tmp_path / "kv", 0, 2, True, metadata_server_url=url))
    rank1, pool1 = open_store(config(tmp_path / "kv", 1, 2, True, metadata_server_url=url))
    assert rank0.file_path == rank1.file_path == str(tmp_path / "kv.mla.0.bin")
    idx1, _ = fill_random_pages(pool1, 2, seed=2)
    assert rank1.batch_set_v1(["x0", "x1"], idx1) == [True, True]  # SGLang's answer for a non-writer
    assert rank1.get_stats()["write_skipped_non_writer"] == 2
    assert rank0.exists_many(["x0", "x1"]) == [False, False]
    idx0, expected = fill_random_pages(pool0, 2, seed=3)
    assert rank0.batch_set_v1(["y0", "y1"], idx0) == [True, True]
    dest = pool1.alloc(2 * pool1.page_size)
    assert rank1.batch_get_v1(["y0", "y1"], dest) == [True, True]
    assert read_page_bytes(pool1, dest) == expected


class InterleavingClient(PlainFileClient):
    """The real file client, with another writer's actions run between lookup and read.

    A scheduling hook, not a fake: the competing delete and write are real calls on a second
    backend, placed at the one moment a real race would put them.
    """

    before_read: Callable[[], None] | None = None

    def batch_read(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        hook, self.before_read = self.before_read, None
        if hook is not None:
            hook()
        return super().batch_read(offsets, items)


def test_read_of_a_slot_reused_mid_read_is_a_miss(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    reader, pool = open_store(config(tmp_path / "kv", file_size=2 * make_pool().page_bytes))
    writer, wpool = open_store(config(tmp_path / "kv", file_size=2 * make_pool().page_bytes))
    idx, _ = fill_random_pages(wpool, 1, seed=4)
    assert writer.batch_set_v1(["victim"], idx) == [True]
    assert reader.io is not None
    interleaving = InterleavingClient(reader.file_path, reader.settings.file_size, numjobs=1)
    reader.io.close()
    reader.io = interleaving
    other_idx, other_bytes = fill_random_pages(wpool, 1, seed=5)

    def reuse_the_slot() -> None:
        assert writer.delete("victim")
        assert writer.batch_set_v1(["intruder"], other_idx) == [True]

    interleaving.before_read = reuse_the_slot
    dest = pool.alloc(pool.page_size)
    assert reader.batch_get_v1(["victim"], dest) == [False]
    assert read_page_bytes(pool, dest) == other_bytes  # the bytes were the intruder's: rightly refused
    assert reader.get_stats()["read_stale"] == 1
    assert reader.batch_get_v1(["intruder"], dest) == [True]


def test_chain_from_prefix_keys_guides_eviction(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    pb = make_pool().page_bytes
    backend, pool = open_store(config(tmp_path / "kv", file_size=4 * pb))
    idx, _ = fill_random_pages(pool, 4, seed=6)
    page = pool.page_size
    assert backend.batch_set_v1(["h0", "h1"], idx[: 2 * page]) == [True, True]
    info = HiCacheStorageExtraInfo(prefix_keys=["h0", "h1"])
    assert backend.batch_set_v1(["h2", "h3"], idx[2 * page :], info) == [True, True]
    backend.batch_get_v1(["h0", "h1", "h2", "h3"], idx)
    other, _ = fill_random_pages(pool, 1, seed=7)
    assert backend.batch_set_v1(["new"], other) == [True]
    # h3 (the tail) went, not h0 (the least recently used page, but the chain's head).
    assert backend.exists_many(["h0", "h1", "h2", "h3"]) == [True, True, True, False]
    assert backend.batch_exists(["h0", "h1", "h2", "h3"]) == 3


def test_metadata_service_down_gives_per_page_failures(tmp_path: Path, opened: list[Hf3fsStore]) -> None:
    service = start_metadata_service()
    try:
        backend = Hf3fsStore(config(tmp_path / "kv", metadata_server_url=service.url, client_timeout=2))
        opened.append(backend)
        pool = make_pool()
        backend.register_mem_pool_host(pool)
        idx, _ = fill_random_pages(pool, 2, seed=8)
        assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
        backend.health_check()
    finally:
        service.stop()
    assert backend.batch_get_v1(["a", "b"], idx) == [False, False]
    assert backend.batch_set_v1(["c", "d"], idx) == [False, False]
    assert backend.exists("a") is False and backend.batch_exists(["a"]) == 0
    assert backend.delete("a") is False
    assert backend.get_stats()["metadata_errors"] >= 4
    with pytest.raises(HiCacheError, match="unreachable"):
        backend.health_check()


def test_unreachable_metadata_service_is_a_config_error(tmp_path: Path) -> None:
    from hf3fs_testutil import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendConfigError, match="metadata_server"):
        Hf3fsStore(config(tmp_path / "kv", metadata_server_url=url, client_timeout=1))


def test_geometry_conflict_on_a_shared_file(
    tmp_path: Path, metadata_service: ServiceProcess, open_store: Callable[..., Any]
) -> None:
    cfg = config(tmp_path / "kv", metadata_server_url=metadata_service.url)
    backend, pool = open_store(cfg)
    idx, _ = fill_random_pages(pool, 1, seed=9)
    assert backend.batch_set_v1(["p"], idx) == [True]
    other = Hf3fsStore(cfg)
    try:
        bigger = HostKVPool(size=32 * 16, page_size=16, layer_num=4, head_num=2, head_dim=8)
        with pytest.raises(BackendConfigError, match="file_path_prefix"):
            other.register_mem_pool_host(bigger)
    finally:
        other.close()


def test_in_process_metadata_refuses_a_second_process(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    open_store(config(tmp_path / "kv"))
    code = (
        "import json,sys\n"
        "from hicache_core import HiCacheStorageConfig\n"
        "from hicache_core.spec.errors import BackendConfigError\n"
        "from hicache_hf3fs.store import Hf3fsStore\n"
        "try:\n"
        "    Hf3fsStore(HiCacheStorageConfig(model_name='m', extra_config=json.loads(sys.argv[1])))\n"
        "    print('opened')\n"
        "except BackendConfigError as e:\n"
        "    print('refused:', e)\n"
    )
    extra = {"file_path_prefix": str(tmp_path / "kv"), "file_size": 1 << 20, "client": "file"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(extra)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr
    assert "metadata_server_url" in out.stdout


def test_in_process_index_survives_reopen(tmp_path: Path, open_store: Callable[..., Any], opened: list[Hf3fsStore]) -> None:
    backend, pool = open_store(config(tmp_path / "kv"))
    idx, expected = fill_random_pages(pool, 3, seed=10)
    assert backend.batch_set_v1(["r0", "r1", "r2"], idx) == [True] * 3
    backend.close()
    saved = json.loads((tmp_path / "kv.0.bin.index.json").read_text())
    assert len(saved["entries"]) == 3
    again, pool2 = open_store(config(tmp_path / "kv"))
    dest = pool2.alloc(3 * pool2.page_size)
    assert again.batch_get_v1(["r0", "r1", "r2"], dest) == [True] * 3
    assert read_page_bytes(pool2, dest) == expected


def test_metadata_service_state_survives_restart(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    state = tmp_path / "state.json"
    service = start_metadata_service(str(state))
    try:
        backend, pool = open_store(config(tmp_path / "kv", metadata_server_url=service.url))
        idx, expected = fill_random_pages(pool, 2, seed=11)
        assert backend.batch_set_v1(["s0", "s1"], idx) == [True, True]
    finally:
        service.stop()  # SIGTERM: uvicorn shuts down gracefully and the state is saved
    assert json.loads(state.read_text())["namespaces"], "the service saved no state at shutdown"
    service = start_metadata_service(str(state))
    try:
        again, pool2 = open_store(config(tmp_path / "kv", metadata_server_url=service.url))
        dest = pool2.alloc(2 * pool2.page_size)
        assert again.batch_get_v1(["s0", "s1"], dest) == [True, True]
        assert read_page_bytes(pool2, dest) == expected
    finally:
        service.stop()


def test_entry_point_lists_the_backend_and_creates_it(tmp_path: Path, opened: list[Hf3fsStore]) -> None:
    from hicache_core.plugins import default_registry

    rows = {r.name: r for r in default_registry().describe()}
    row = rows["hf3fs"]
    assert row.status == "available" and row.distribution == "hicache-hf3fs"
    assert "zero_copy_v1" in row.capabilities and "requires_page_layout" not in row.capabilities
    assert "plain-file mode only" in row.description  # no usrbio client on this machine
    backend = create_backend("hf3fs", config(tmp_path / "kv"), mem_pool_host=make_pool())
    assert isinstance(backend, Hf3fsStore)
    opened.append(backend)


def test_pages_survive_a_killed_writer_through_the_journal(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    """In-process metadata saves its snapshot at close; a writer killed before that keeps
    every page it reported stored (the journal), and an evicted page never comes back."""
    extra = {"file_path_prefix": str(tmp_path / "kv"), "file_size": 4 * make_pool().page_bytes,
             "numjobs": 2, "client": "file"}
    script = f"""
import json, os, signal, torch
from hicache_hf3fs.store import Hf3fsStore
from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.testing.pages import fill_random_pages
pool = HostKVPool(size=32 * 16, page_size=16, layer_num=2, head_num=2, head_dim=8, dtype=torch.bfloat16)
store = Hf3fsStore(HiCacheStorageConfig(model_name="m", extra_config=json.loads({json.dumps(json.dumps(extra))})))
store.register_mem_pool_host(pool)
idx, _ = fill_random_pages(pool, 6, seed=21)  # 6 pages into 4 slots: the first two are evicted
print([store.batch_set_v1([f"k{{i}}"], idx[16 * i:16 * i + 16])[0] for i in range(6)], flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(): the snapshot is never saved
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9 and "[True, True, True, True, True, True]" in out.stdout, out.stderr
    backend, pool = open_store(HiCacheStorageConfig(model_name="m", extra_config=extra))
    _, expected = fill_random_pages(make_pool(), 6, seed=21)
    keys = [f"k{i}" for i in range(6)]
    assert backend.exists_many(keys) == [False, False, True, True, True, True]
    dest = pool.alloc(4 * pool.page_size)
    assert dest is not None
    assert backend.batch_get_v1(keys[2:], dest) == [True] * 4
    assert read_page_bytes(pool, dest) == expected[2:]
