"""Any hicache backend inside the real SGLang 0.5.23, through SGLang's own ``dynamic`` backend.

SGLang's ``StorageBackendFactory.create_backend("dynamic", config, pool)`` loads
``hicache_core.compat.sglang_bridge.HiCacheBridge`` (SGLang checks it subclasses its own
``HiCacheStorage``), and the bridge runs the hicache backend the extra config names. Pages go
in and out of SGLang's own ``MHATokenToKVPoolHost`` / ``MLATokenToKVPoolHost`` (built on CPU),
through the calls SGLang's controller makes: ``register_mem_pool_host``,
``on_host_pools_registered``, ``batch_set_v1``/``batch_get_v1``/``batch_exists`` (zero copy),
``batch_set``/``batch_get`` of flat pages (the generic path) and the v2 ``PoolTransfer`` calls.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as SGLangHiCacheStorage  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo as SGLangExtraInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer, PoolTransferResult  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang_real.sglang_env import FIRST_PARTY  # noqa: E402
from sglang_real.sglang_pools import (  # noqa: E402
    POOL_CASES,
    fill_pages,
    read_pages,
    sglang_host_pool,
    sglang_storage_config,
)

from hicache_core.compat.sglang_bridge import BRIDGE_KEY  # noqa: E402
from hicache_core.compat.sglang_pool import SGLangHostPoolView  # noqa: E402
from hicache_core.memory import pages as hc_pages  # noqa: E402
from hicache_core.spec.errors import BackendConfigError, HiCacheError, LayoutError  # noqa: E402


def keys_for(tag: str, n: int) -> list[str]:
    return [f"{tag}{i:04d}".encode().hex().ljust(64, "0")[:64] for i in range(n)]


def sglang_create(kind: str, layout: str, extra: dict[str, Any], opened: list[Any], **cfg: Any) -> tuple[Any, Any]:
    """What SGLang's controller does on attach: create through the factory, register, finish."""
    pool = sglang_host_pool(kind, layout)
    config = sglang_storage_config(kind, layout, extra_config=dict(extra), **cfg)
    backend = StorageBackendFactory.create_backend("dynamic", config, pool)
    opened.append(backend)
    backend.register_mem_pool_host(pool)
    backend.on_host_pools_registered()
    return backend, pool


# ---------------------------------------------------------------------- loading
def test_importing_the_bridge_imports_no_sglang() -> None:
    """hicache never imports sglang unless the bridge class is asked for."""
    code = ("import sys, hicache_core, hicache_core.compat.sglang_bridge as b; "
            "assert not any(m == 'sglang' or m.startswith('sglang.') for m in sys.modules), 'sglang imported'; "
            "b.HiCacheBridge; assert 'sglang.srt.mem_cache.hicache_storage' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_sglang_factory_creates_the_bridge(bridge_extra: Callable[..., dict[str, Any]], opened: list[Any]) -> None:
    backend, pool = sglang_create("mha", "page_first", bridge_extra("file"), opened, tp_rank=1, tp_size=2,
                                  model_name="org/model-a")
    assert isinstance(backend, SGLangHiCacheStorage), "SGLang's issubclass check passed"
    assert type(backend).__name__ == "HiCacheBridge"
    assert type(backend.inner).__module__.startswith("hicache_file"), "the named hicache backend runs"
    # SGLang's HiCacheStorageConfig became hicache's, field for field; SGLang's keys stayed out.
    inner_cfg = backend.inner.config
    assert (inner_cfg.tp_rank, inner_cfg.tp_size, inner_cfg.model_name) == (1, 2, "org/model-a")
    assert BRIDGE_KEY not in inner_cfg.extra() and "module_path" not in inner_cfg.extra()
    assert isinstance(backend.inner.mem_pool_host, SGLangHostPoolView)
    assert backend.inner.mem_pool_host.sglang_pool is pool and backend.mem_pool_host is pool


def test_bridge_without_a_backend_name_says_what_to_add(bridge_extra: Callable[..., dict[str, Any]]) -> None:
    extra = bridge_extra("file")
    del extra[BRIDGE_KEY]
    config = sglang_storage_config(extra_config=extra)
    with pytest.raises(BackendConfigError, match=r"hicache_backend.*hicache backends"):
        StorageBackendFactory.create_backend("dynamic", config, None)


def test_pages_module_reads_sglang_pools_as_sglang_does() -> None:
    """``hicache_core.memory.pages`` on SGLang's own pools: the flat page it names is SGLang's
    ``get_data_page(flat=True)``, its pieces concatenated are that page, and writing a flat page
    is SGLang's ``set_from_flat_data_page``."""
    for kind, layout in POOL_CASES:
        pool = sglang_host_pool(kind, layout)
        idx, expected = fill_pages(pool, 3, seed=7)
        geo = hc_pages.page_geometry(pool)
        assert hc_pages.pool_kind(pool) == kind
        for i, start in enumerate(idx[:: pool.page_size].tolist()):
            page = start // pool.page_size
            ours = hc_pages.read_flat_page(pool, page)
            assert ours.view(torch.uint8).numpy().tobytes() == expected[i], (kind, layout)
            pieces = b"".join(bytes(m) for m in hc_pages.page_memoryviews(pool, page, geo))
            assert pieces == expected[i], (kind, layout, "pieces in stored-byte order")
        other = pool.alloc(pool.page_size)
        hc_pages.write_flat_page(pool, int(other[0]) // pool.page_size, ours)
        assert read_pages(pool, other) == [expected[-1]], (kind, layout)


def test_page_unified_pool_is_refused_with_a_layout_error(bridge_extra: Callable[..., dict[str, Any]],
                                                          opened: list[Any]) -> None:
    with pytest.raises(LayoutError, match="page_unified"):
        sglang_create("mha", "page_unified", bridge_extra("file"), opened)


# ---------------------------------------------------------------------- v1 round trips, every backend
#: Backends that refuse MLA models by design, with an error that says so.
MHA_ONLY = {"aibrix"}


ROUNDTRIP_CASES = [pytest.param(name, kind, layout, id=f"{name}-{kind}-{layout}")
                   for name in FIRST_PARTY for kind, layout in POOL_CASES]


@pytest.mark.parametrize(("name", "kind", "layout"), ROUNDTRIP_CASES)
def test_v1_roundtrip_with_sglang_pools(name: str, kind: str, layout: str, bridge_extra: Callable[..., dict[str, Any]],
                                        opened: list[Any]) -> None:
    if name in MHA_ONLY and kind == "mla":
        with pytest.raises(HiCacheError, match="MLA"):
            sglang_create(kind, layout, bridge_extra(name), opened)
        return
    try:
        backend, pool = sglang_create(kind, layout, bridge_extra(name), opened)
    except LayoutError as exc:  # a backend may need page-contiguous memory: it must say so
        assert layout == "layer_first" and "page_first" in str(exc), exc
        return
    ks = keys_for(f"{name}{kind}{layout}", 5)
    idx, expected = fill_pages(pool, 5, seed=hash((name, kind, layout)) & 0xFFFF)
    info = SGLangExtraInfo(prefix_keys=None)
    assert backend.batch_set_v1(ks, idx, info) == [True] * 5
    assert backend.batch_exists([*ks, keys_for("absent", 1)[0]], info) == 5
    dest = pool.alloc(6 * pool.page_size)
    got = backend.batch_get_v1([ks[3], keys_for("absent", 1)[0], ks[0], ks[1], ks[2], ks[4]], dest, info)
    assert got == [True, False, True, True, True, True]
    pages = read_pages(pool, dest)
    assert [pages[0], *pages[2:]] == [expected[3], expected[0], expected[1], expected[2], expected[4]]


@pytest.mark.parametrize(("kind", "layout"), [("mha", "layer_first"), ("mha", "page_head"), ("mla", "page_first")])
def test_generic_flat_page_path_as_sglang_controller_calls_it(kind: str, layout: str,
                                                              bridge_extra: Callable[..., dict[str, Any]],
                                                              opened: list[Any]) -> None:
    """interface_v1 0: SGLang's controller moves ``get_data_page`` tensors through ``batch_set``
    and reads into ``get_dummy_flat_data_page`` targets through ``batch_get``. The bytes are the
    same as the zero-copy path's: a page written one way is read the other way."""
    backend, pool = sglang_create(kind, layout, bridge_extra("file", interface_v1=0), opened)
    ks = keys_for(f"generic{kind}{layout}", 4)
    idx, expected = fill_pages(pool, 4, seed=11)
    P = pool.page_size
    data = [pool.get_data_page(idx[i * P]) for i in range(2)]  # SGLang's _generic_page_set
    assert backend.batch_set(ks[:2], data) is True
    assert backend.batch_set_v1(ks[2:], idx[2 * P:], SGLangExtraInfo()) == [True, True]
    targets = [pool.get_dummy_flat_data_page() for _ in ks]  # SGLang's _generic_page_get
    got = backend.batch_get(ks, targets)
    assert all(g is not None for g in got)
    assert [g.contiguous().view(torch.uint8).numpy().tobytes() for g in got] == expected
    dest = pool.alloc(2 * P)
    assert backend.batch_get_v1(ks[:2], dest, SGLangExtraInfo()) == [True, True]
    assert read_pages(pool, dest) == expected[:2]


def test_v2_pool_transfers_in_sglang_types(bridge_extra: Callable[..., dict[str, Any]], opened: list[Any]) -> None:
    """The v2 calls with SGLang's own ``PoolTransfer``; answers in SGLang's types and keys."""
    backend, pool = sglang_create("mha", "page_first", bridge_extra("file"), opened)
    backend.register_mem_host_pool_v2(pool, PoolName.KV)
    ks = keys_for("v2", 3)
    idx, expected = fill_pages(pool, 3, seed=21)
    written = backend.batch_set_v2([PoolTransfer(name=PoolName.KV, host_indices=idx, keys=ks)])
    assert written[PoolName.KV] == [True, True, True], "keyed by SGLang's PoolName, as it looks results up"
    found = backend.batch_exists_v2([*ks, keys_for("none", 1)[0]], [])
    assert isinstance(found, PoolTransferResult) and found.kv_hit_pages == 3
    dest = pool.alloc(3 * pool.page_size)
    read = backend.batch_get_v2([PoolTransfer(name=PoolName.KV, host_indices=dest, keys=ks)])
    assert read[PoolName.KV] == [True] * 3 and read_pages(pool, dest) == expected


def test_pages_written_inside_sglang_are_hits_for_a_hicache_node(tmp_path: Any,
                                                                  bridge_extra: Callable[..., dict[str, Any]],
                                                                  opened: list[Any]) -> None:
    """One L3 for both engines with a hicache backend: pages SGLang backs up through the bridge
    (from SGLang's pool) are read by hicache's own file backend into hicache's HostKVPool of the
    same geometry, byte for byte, and the reverse; a pool of another layout order misses them."""
    from hicache_core import HiCacheStorageConfig, HostKVPool, create_backend

    extra = bridge_extra("file")
    backend, pool = sglang_create("mha", "page_first", extra, opened)
    ks = keys_for("shared", 3)
    idx, expected = fill_pages(pool, 3, seed=31)
    assert backend.batch_set_v1(ks, idx, SGLangExtraInfo()) == [True] * 3

    def hicache_node_pool(layout: str) -> tuple[Any, Any]:
        hpool = HostKVPool(size=pool.size, page_size=pool.page_size, layer_num=pool.layer_num,
                           head_num=pool.head_num, head_dim=pool.head_dim, dtype=pool.dtype, layout=layout,
                           pin_memory=False)
        cfg = HiCacheStorageConfig(model_name="sglang-real/model", extra_config={"path": extra["path"]})
        hb = create_backend("file", cfg, mem_pool_host=hpool)
        opened.append(hb)
        return hb, hpool

    node, hpool = hicache_node_pool("page_first")
    dest = hpool.alloc(3 * hpool.page_size)
    assert node.batch_get_v1(ks, dest) == [True] * 3
    assert [hpool.read_page(p).view(torch.uint8).numpy().tobytes() for p in hpool.indices_to_pages(dest)] == expected
    # the reverse: a page the hicache node stores is a hit inside SGLang
    (back,) = keys_for("reverse", 1)
    assert node.batch_set_v1([back], dest[: hpool.page_size]) == [True]
    sg_dest = pool.alloc(pool.page_size)
    assert backend.batch_get_v1([back], sg_dest, SGLangExtraInfo()) == [True]
    assert read_pages(pool, sg_dest) == [expected[0]]
    # another byte order (page_head) never reads them as its KV
    other, opool = hicache_node_pool("page_head")
    assert other.batch_get_v1(ks, opool.alloc(3 * opool.page_size)) == [False] * 3


def test_v2_sidecar_pool_through_the_bridge(bridge_extra: Callable[..., dict[str, Any]], opened: list[Any]) -> None:
    """A sidecar pool registered as SGLang registers one (``register_mem_host_pool_v2`` with
    SGLang's ``PoolName.MAMBA``), moved with SGLang's ``PoolTransfer`` and ``trailing_pages``:
    stored beside the KV pages, found by ``batch_exists_v2``, read back byte-equal. The sidecar
    here is hicache's ``HostStatePool`` (SGLang's own Mamba host pool is not built here)."""
    from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy

    from hicache_core.memory.state_pool import HostStatePool

    backend, pool = sglang_create("mha", "page_first", bridge_extra("file"), opened)
    state = HostStatePool(16, (3, 5), dtype=torch.float32)
    backend.register_mem_host_pool_v2(pool, PoolName.KV)
    backend.register_mem_host_pool_v2(state, PoolName.MAMBA)
    backend.on_host_pools_registered()
    ks = keys_for("mamba", 3)
    idx, expected = fill_pages(pool, 3, seed=41)
    st_idx = state.alloc(3)
    state.kv_buffer[st_idx] = torch.randn(3, 15)
    want_states = state.kv_buffer[st_idx].clone()
    wrote = backend.batch_set_v2([
        PoolTransfer(name=PoolName.KV, host_indices=idx, keys=ks),
        PoolTransfer(name=PoolName.MAMBA, host_indices=st_idx, keys=ks, hit_policy=PoolHitPolicy.TRAILING_PAGES),
    ])
    assert wrote == {PoolName.KV: [True] * 3, PoolName.MAMBA: [True] * 3}
    found = backend.batch_exists_v2(ks, [PoolTransfer(name=PoolName.MAMBA, keys=ks[-1:],
                                                      hit_policy=PoolHitPolicy.TRAILING_PAGES)])
    assert isinstance(found, PoolTransferResult) and found.kv_hit_pages == 3
    dest, st_dest = pool.alloc(3 * pool.page_size), state.alloc(3)
    got = backend.batch_get_v2([
        PoolTransfer(name=PoolName.KV, host_indices=dest, keys=ks),
        PoolTransfer(name=PoolName.MAMBA, host_indices=st_dest, keys=ks, hit_policy=PoolHitPolicy.TRAILING_PAGES),
    ])
    assert got == {PoolName.KV: [True] * 3, PoolName.MAMBA: [True] * 3}
    assert read_pages(pool, dest) == expected and torch.equal(state.kv_buffer[st_dest], want_states)


def test_sglang_tp_lcm_size_pages_are_shared_across_tp_sizes(tmp_path: Any, bridge_extra: Callable[..., dict[str, Any]],
                                                             opened: list[Any]) -> None:
    """SGLang's ``tp_lcm_size`` (should_split_heads, page_head): a TP-1 SGLang rank stores each page
    as head groups through the bridge; each rank of a TP-2 hicache node reads its own heads."""
    from hicache_core import HiCacheStorageConfig, HostKVPool, create_backend

    extra = {**bridge_extra("file"), "path": str(tmp_path / "l3")}
    backend, pool = sglang_create("mha", "page_head", extra, opened, tp_lcm_size=2, should_split_heads=True)
    ks = keys_for("lcm", 3)
    idx, expected = fill_pages(pool, 3, seed=11)
    assert backend.batch_set_v1(ks, idx, SGLangExtraInfo(prefix_keys=None)) == [True] * 3
    heads = pool.head_num
    for rank in (0, 1):
        half = HostKVPool(16 * pool.page_size, pool.page_size, pool.layer_num, heads // 2, pool.head_dim,
                          dtype=pool.dtype, layout="page_head", pin_memory=False)
        cfg = HiCacheStorageConfig(model_name="sglang-real/model", tp_rank=rank, tp_size=2,
                                   extra_config={"path": str(tmp_path / "l3")})
        reader = create_backend("file", cfg, half)
        opened.append(reader)
        dst = half.pages_to_indices([5, 2, 9])
        assert reader.batch_get_v1(ks, dst) == [True] * 3
        for i, page in enumerate([5, 2, 9]):
            whole = torch.frombuffer(bytearray(expected[i]), dtype=torch.uint8).view(pool.dtype).view(2, heads, -1)
            assert torch.equal(half.read_page(page).view(2, heads // 2, -1),
                               whole[:, rank * heads // 2 : (rank + 1) * heads // 2])
