"""SGLang 0.5.23's own storage classes inside hicache, loaded the way an SGLang user names them.

``hicache check dynamic`` (the whole conformance kit, in a child process, as an author runs it)
passes on SGLang's ``HiCacheFile``, on SGLang's ``MooncakeStore`` against a real Mooncake
master and storage node on 127.0.0.1, and on SGLang's ``HiCacheNixl`` with NIXL's POSIX plugin. What those classes cannot do themselves is adapted in
``hicache_core.plugins.adapter`` (never by skipping a check): ``HiCacheFile.get`` without a
target gets a staging page of the host pool; Mooncake's pointer-form ``get``/``set`` are served
(and NIXL's deprecated ones) are served through their own zero-copy ``batch_get_v1``/
``batch_set_v1``, and NIXL's all-or-nothing v1 read is asked per present page; all are handed SGLang's own
``HiCacheStorageConfig`` and store pages under hicache's key namespace (dtype, layout,
geometry, shard), so a page of another format is a miss. ``hicache serve`` runs SGLang's
``HiCacheFile`` as its L3 and serves a replayed trace from it, and restarted on the same directory, serves hits from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

from sglang.srt.mem_cache.hicache_storage import HiCacheFile  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig as SGLangConfig  # noqa: E402

from hicache_core import HiCacheStorageConfig, HostKVPool, create_backend  # noqa: E402
from hicache_core.node.server import NodeProcess  # noqa: E402
from hicache_core.plugins.adapter import DuckTypedBackend  # noqa: E402
from hicache_core.replay import HttpTarget, load_trace, replay, sample_trace_path  # noqa: E402

RUN_WITH_STAND_IN = Path(__file__).resolve().parent / "run_with_stand_in.py"
SGLANG_FILE = {"backend_name": "sglang_file", "module_path": "sglang.srt.mem_cache.hicache_storage",
               "class_name": "HiCacheFile"}
SGLANG_MOONCAKE = {"backend_name": "sglang_mooncake",
                   "module_path": "sglang.srt.mem_cache.storage.mooncake_store.mooncake_store",
                   "class_name": "MooncakeStore"}
#: What SGLang's Mooncake client needs from its environment on a loopback-only machine (REFERENCE §6).
MOONCAKE_ENV = {"MC_TCP_BIND_ADDRESS": "127.0.0.1", "MC_STORE_CLIENT_SETUP_RETRIES": "1", "MC_LOG_LEVEL": "ERROR"}


def hicache_check(extra: dict[str, Any], env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """``hicache check dynamic --config JSON`` in a child process (with the import-only stand-in)."""
    out = subprocess.run(
        [sys.executable, str(RUN_WITH_STAND_IN), "hicache_core.cli.main", "check", "dynamic", "--config",
         json.dumps(extra)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    return out.stdout


def test_hicache_check_passes_on_sglang_hicachefile(tmp_path: Path) -> None:
    stdout = hicache_check({**SGLANG_FILE, "file_storage_path": str(tmp_path / "l3")})
    assert "dynamic conforms" in stdout and " failed" not in stdout
    assert any(p.name.endswith(".bin") for p in (tmp_path / "l3").iterdir()), "SGLang's own page files"


def test_hicache_check_passes_on_sglang_mooncake_store(mooncake_cluster: Any) -> None:
    extra = {**SGLANG_MOONCAKE, **mooncake_cluster.extra_config()}
    stdout = hicache_check(extra, env=MOONCAKE_ENV, timeout=900)
    assert "dynamic conforms" in stdout and " failed" not in stdout


def test_hicache_check_passes_on_sglang_nixl_store(tmp_path: Path) -> None:
    """SGLang's ``HiCacheNixl`` with NIXL's POSIX plugin (files under tmp_path), which SGLang
    configures through its environment variables."""
    import importlib.util

    if importlib.util.find_spec("nixl") is None:
        pytest.skip("the nixl package is not installed (scripts/setup.sh --all installs it)")
    # HiCacheNixl starts an L3 cleaner that deletes the oldest pages whenever the *disk* holding
    # the directory is over 80% full (statvfs, whatever else fills it): on a shared CI disk that
    # evicts pages the kit just stored. Off here; the kit checks the store, not the disk's fill.
    extra = {"backend_name": "sglang_nixl", "module_path": "sglang.srt.mem_cache.storage.nixl.hicache_nixl",
             "class_name": "HiCacheNixl", "use_direct_io": False, "l3_cleaner_enabled": False}
    env = {"SGLANG_HICACHE_NIXL_BACKEND_STORAGE_DIR": str(tmp_path / "nixl"),
           "SGLANG_HICACHE_NIXL_BACKEND_PLUGIN": "POSIX"}
    stdout = hicache_check(extra, env=env)
    assert "dynamic conforms" in stdout and " failed" not in stdout


def test_sglang_hicachefile_is_handed_sglang_config_and_hicache_pool(tmp_path: Path) -> None:
    """SGLang's class with hicache's HostKVPool: it gets SGLang's own config object, and its
    flat-page calls (``get_data_page``, ``get_dummy_flat_data_page``, ``set_from_flat_data_page``
    on hicache's pool) round-trip every layout's pages byte for byte."""
    for layout in ("layer_first", "page_first", "page_first_direct", "page_head"):
        pool = HostKVPool(size=64, page_size=4, layer_num=2, head_num=2, head_dim=8, layout=layout)
        cfg = HiCacheStorageConfig(model_name="org/m", extra_config={**SGLANG_FILE,
                                                                      "file_storage_path": str(tmp_path / layout)})
        backend = create_backend("dynamic", cfg, mem_pool_host=pool)
        assert isinstance(backend, DuckTypedBackend) and isinstance(backend.inner, HiCacheFile)
        idx = pool.alloc(12)
        assert idx is not None
        for p in pool.indices_to_pages(idx):
            pool.write_page(p, torch.randn(pool.page_bytes // 2).to(torch.bfloat16))
        want = [pool.read_page(p) for p in pool.indices_to_pages(idx)]
        keys = [f"{layout}{i}".encode().hex().ljust(64, "0") for i in range(3)]
        assert backend.batch_set_v1(keys, idx) == [True] * 3  # SGLang's batch_set of get_data_page tensors
        dest = pool.alloc(12)
        assert dest is not None
        assert backend.batch_get_v1(keys, dest) == [True] * 3  # its batch_get into dummy pages
        assert all(torch.equal(pool.read_page(p), w) for p, w in zip(pool.indices_to_pages(dest), want))
        assert backend.get("absent".ljust(64, "0")) is None, "get without a target is a miss, not an error"
        files = sorted(p.name for p in (tmp_path / layout).iterdir())
        assert len(files) == 3 and all("@hc1.org-m." in f and f.endswith("_org-m_0_1.bin") for f in files), files


def test_sglang_class_receives_sglang_config_object(tmp_path: Path) -> None:
    cfg = HiCacheStorageConfig(tp_rank=1, tp_size=2, model_name="org/m",
                               extra_config={**SGLANG_FILE, "file_storage_path": str(tmp_path / "c")})
    seen: list[Any] = []
    original = HiCacheFile.__init__

    def spy(self: Any, storage_config: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(storage_config)
        original(self, storage_config, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(HiCacheFile, "__init__", spy)
    try:
        create_backend("dynamic", cfg)
    finally:
        mp.undo()
    (got,) = seen
    assert type(got) is SGLangConfig, "SGLang's own HiCacheStorageConfig, not hicache's"
    assert (got.tp_rank, got.tp_size, got.model_name, got.dcp_size) == (1, 2, "org/m", 1)
    assert got.extra_config == {"file_storage_path": str(tmp_path / "c")}, "SGLang's dynamic keys taken out"


REPLAY_REQUESTS = 60


def _serve_and_replay(tmp_path: Path, log_name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One ``hicache serve`` process with SGLang's HiCacheFile as L3, a replayed trace slice."""
    flags = ["--page-size", "64", "--device-capacity-tokens", "8192", "--hicache-ratio", "2",
             "--hicache-storage-backend", "dynamic", "--hicache-storage-backend-extra-config", json.dumps(extra)]
    trace = load_trace(sample_trace_path(), REPLAY_REQUESTS)
    with NodeProcess(flags, log_path=tmp_path / log_name) as node:
        status = httpx.get(node.url + "/hicache/status", timeout=30).json()
        assert status["storage_state"] == "attached", node.log_tail()
        target = HttpTarget(node.url)
        try:
            summary = replay(target, trace, concurrency=2, progress=False).summary()
        finally:
            target.close()
        counters = httpx.get(node.url + "/hicache/status", timeout=30).json()["ranks"][0]["storage"]["counters"]
        assert counters.get("backup_failed_pages", 0) == 0, counters
    assert summary["failed_requests"] == 0 and summary["verify_errors"] == 0, summary
    assert summary["node_verify_errors"] == 0, summary
    return dict(summary)


def test_hicache_serve_on_sglang_hicachefile(tmp_path: Path) -> None:
    """``hicache serve --hicache-storage-backend dynamic`` with SGLang's HiCacheFile serves a
    replayed trace, backing pages up into SGLang's page files."""
    extra = {**SGLANG_FILE, "file_storage_path": str(tmp_path / "l3")}
    summary = _serve_and_replay(tmp_path, "node.log", extra)
    assert summary["bytes_stored"] > 0
    assert any(p.name.endswith(".bin") for p in (tmp_path / "l3").iterdir())


def test_hicache_serve_on_sglang_hicachefile_across_a_restart(tmp_path: Path) -> None:
    """Node A fills L3 from a replayed trace; node B (empty L1/L2, same directory) serves hits
    from SGLang's page files."""
    extra = {**SGLANG_FILE, "file_storage_path": str(tmp_path / "l3")}
    first = _serve_and_replay(tmp_path, "node0.log", extra)
    second = _serve_and_replay(tmp_path, "node1.log", extra)
    assert first["bytes_stored"] > 0
    assert second["hit_tokens"]["storage"] > first["hit_tokens"]["storage"], (first, second)
