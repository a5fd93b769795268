"""``scheme: sglang`` against a real master and the real SGLang 0.5.23 ``MooncakeStore``.

SGLang's own store class (``sglang.srt.mem_cache.storage.mooncake_store``) runs here: it is set
up against the same local master as hicache (its extra config names 127.0.0.1), writes pages
from SGLang's own host pools, and hicache-mooncake under ``scheme: sglang`` reads them byte-equal;
and the reverse. The object names are compared with the names SGLang's store builds itself.
Importing SGLang's modules needs the import-only torchvision stand-in of ``tests/sglang_real``
(``sglang_env.require_sglang``); nothing of SGLang is replaced. Skipped, saying why, when
sglang is not installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

from hicache_mooncake.cluster import LocalMooncakeCluster  # noqa: E402
from hicache_mooncake.store import MooncakeStore  # noqa: E402
from sglang.srt.mem_cache.storage.mooncake_store.mooncake_store import (  # noqa: E402
    MooncakeStore as SGLangMooncakeStore,
)
from sglang_real.sglang_pools import (  # noqa: E402
    HEAD_DIM,
    HEADS,
    LAYERS,
    MLA_LORA,
    MLA_ROPE,
    PAGE_SIZE,
    fill_pages,
    read_pages,
    sglang_host_pool,
    sglang_storage_config,
)

from hicache_core import HiCacheStorageConfig  # noqa: E402
from hicache_core.memory.host_pool import HostKVPool  # noqa: E402
from hicache_core.spec.errors import BackendConfigError  # noqa: E402
from hicache_core.testing.pages import fill_random_pages, read_page_bytes  # noqa: E402

#: (kind, layout) pairs SGLang's MooncakeStore itself can write (it refuses MHA layer_first).
SGLANG_WRITES = [("mha", "page_first"), ("mha", "page_first_direct"), ("mha", "page_head"),
                 ("mla", "page_first"), ("mla", "page_first_direct"), ("mla", "layer_first")]
N = 3


def _keys(n: int) -> list[str]:
    return [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(n)]


def _model() -> str:
    """A model name of its own per test: each test's pages and format records stay apart."""
    return f"org/sgl-{uuid.uuid4().hex[:8]}"


def _hicache_pool(kind: str, layout: str, pages: int = 16, dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    if kind == "mla":
        return HostKVPool(pages * PAGE_SIZE, PAGE_SIZE, LAYERS, 1, MLA_LORA + MLA_ROPE, dtype, layout, True,
                          kv_lora_rank=MLA_LORA, qk_rope_head_dim=MLA_ROPE)
    return HostKVPool(pages * PAGE_SIZE, PAGE_SIZE, LAYERS, HEADS, HEAD_DIM, dtype, layout)


@pytest.fixture
def sglang_store(mooncake_cluster: LocalMooncakeCluster) -> Iterator[Callable[..., Any]]:
    """SGLang's own MooncakeStore, built as its backend factory builds it, on the local master."""
    opened: list[Any] = []

    def _open(kind: str, layout: str, pool: Any, **cfg: Any) -> Any:
        config = sglang_storage_config(kind, layout, extra_config=dict(mooncake_cluster.extra_config()), **cfg)
        store = SGLangMooncakeStore(config, pool)
        opened.append(store)
        store.register_mem_pool_host(pool)
        return store

    yield _open
    for s in opened:
        s.store.close()


@pytest.fixture
def hicache_store(mooncake_cluster: LocalMooncakeCluster) -> Iterator[Callable[..., MooncakeStore]]:
    opened: list[MooncakeStore] = []

    def _open(kind: str, pool: Any | None = None, extra: dict[str, Any] | None = None, **fields: Any) -> MooncakeStore:
        config = HiCacheStorageConfig(
            is_mla_model=kind == "mla",
            extra_config={**mooncake_cluster.extra_config(), "scheme": "sglang", **(extra or {})}, **fields,
        )
        store = MooncakeStore(config)
        opened.append(store)
        if pool is not None:
            store.register_mem_pool_host(pool)
        return store

    yield _open
    for s in opened:
        s.close()


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("kind", "cfg", "extra"),
    [
        ("mha", {}, {}),
        ("mha", {"tp_rank": 1, "tp_size": 2}, {}),
        ("mha", {"tp_rank": 1, "tp_size": 2, "pp_rank": 1, "pp_size": 2}, {}),
        ("mha", {}, {"extra_backend_tag": "tenant-a"}),
        ("mha", {"model_name": None}, {}),
        ("mla", {}, {}),
        ("mla", {"tp_rank": 1, "tp_size": 2, "pp_rank": 1, "pp_size": 2}, {"extra_backend_tag": "t"}),
    ],
)
def test_object_names_are_the_ones_sglang_builds(
    sglang_store: Callable[..., Any], hicache_store: Callable[..., MooncakeStore], mooncake_cluster: LocalMooncakeCluster,
    kind: str, cfg: dict[str, Any], extra: dict[str, Any],
) -> None:
    """hicache's names equal the names SGLang's store itself builds for the same pages
    (``_tag_keys`` then ``_batch_preprocess``, SGLang's own code, from its own pool)."""
    cfg = {"model_name": _model(), **cfg}
    sg_pool = sglang_host_pool(kind, "page_first")
    config = sglang_storage_config(kind, "page_first", extra_config={**mooncake_cluster.extra_config(), **extra}, **cfg)
    sg = SGLangMooncakeStore(config, sg_pool)
    try:
        sg.register_mem_pool_host(sg_pool)
        keys = _keys(2)
        idx = torch.arange(2 * PAGE_SIZE, dtype=torch.int64)
        sglang_names, _, _ = sg._batch_preprocess(sg._tag_keys(keys), idx)
    finally:
        sg.store.close()
    hc = hicache_store(kind, _hicache_pool(kind, "page_first"), extra, **cfg)
    assert hc.object_keys(keys) == sglang_names


def test_unsupported_settings_are_refused(hicache_store: Callable[..., MooncakeStore]) -> None:
    with pytest.raises(BackendConfigError, match="decode context parallel"):
        hicache_store("mla", tp_size=2, dcp_size=2, logical_page_size=2 * PAGE_SIZE)
    with pytest.raises(BackendConfigError, match="should_split_heads"):
        hicache_store("mha", should_split_heads=True, tp_lcm_size=2)
    with pytest.raises(BackendConfigError, match="scheme"):
        hicache_store("mha", extra={"scheme": "sglang-0.4"})


# ---------------------------------------------------------------------- one L3, two engines
@pytest.mark.parametrize(("kind", "layout"), SGLANG_WRITES)
def test_pages_sglang_writes_are_hits_for_hicache(
    sglang_store: Callable[..., Any], hicache_store: Callable[..., MooncakeStore], kind: str, layout: str,
) -> None:
    model = _model()
    sg_pool = sglang_host_pool(kind, layout)
    sg = sglang_store(kind, layout, sg_pool, model_name=model)
    keys = _keys(N)
    idx, expected = fill_pages(sg_pool, N, seed=1)
    assert sg.batch_set_v1(keys, idx) == [True] * N

    # Into SGLang's own pool of the same layout ...
    reader_pool = sglang_host_pool(kind, layout)
    hc = hicache_store(kind, reader_pool, model_name=model)
    assert hc.batch_exists(keys) == N
    dest = reader_pool.alloc(N * reader_pool.page_size)
    assert hc.batch_get_v1(keys, dest) == [True] * N
    assert read_pages(reader_pool, dest) == expected
    # ... through the flat path ...
    got = hc.get(keys[1])
    assert got is not None and bytes(got.view(torch.uint8).numpy()) == expected[1]
    # ... and into hicache's pool (same page format, so the same bytes)
    hc_pool = _hicache_pool(kind, layout)
    hc2 = hicache_store(kind, hc_pool, model_name=model)
    dest2 = hc_pool.alloc(N * PAGE_SIZE)
    assert dest2 is not None
    assert hc2.batch_get_v1(keys, dest2) == [True] * N
    assert read_page_bytes(hc_pool, dest2) == expected
    assert hc.get_stats()["errors_total"] == 0


@pytest.mark.parametrize(("kind", "layout"), SGLANG_WRITES)
def test_pages_hicache_writes_are_hits_for_sglang(
    sglang_store: Callable[..., Any], hicache_store: Callable[..., MooncakeStore], kind: str, layout: str,
) -> None:
    model = _model()
    hc_pool = _hicache_pool(kind, layout)
    hc = hicache_store(kind, hc_pool, model_name=model)
    keys = _keys(N)
    idx, expected = fill_random_pages(hc_pool, N, seed=2)
    assert hc.batch_set_v1(keys[:2], idx[: 2 * PAGE_SIZE]) == [True, True]
    # the third page through the flat path
    assert hc.set(keys[2], hc_pool.read_page(int(idx[2 * PAGE_SIZE]) // PAGE_SIZE)) is True

    sg_pool = sglang_host_pool(kind, layout)
    sg = sglang_store(kind, layout, sg_pool, model_name=model)
    assert sg.batch_exists(keys) == N
    dest = sg_pool.alloc(N * sg_pool.page_size)
    assert sg.batch_get_v1(keys, dest) == [True] * N
    assert read_pages(sg_pool, dest) == expected


def test_mha_layer_first_reads_sglang_page_first_direct_pages(
    sglang_store: Callable[..., Any], hicache_store: Callable[..., MooncakeStore],
) -> None:
    """SGLang's store refuses MHA layer_first; its K/V objects are the same bytes as a
    page_first_direct page's (same page format), so a hicache layer_first pool reads them."""
    model = _model()
    sg_pool = sglang_host_pool("mha", "page_first_direct")
    sg = sglang_store("mha", "page_first_direct", sg_pool, model_name=model)
    keys = _keys(N)
    idx, expected = fill_pages(sg_pool, N, seed=3)
    assert sg.batch_set_v1(keys, idx) == [True] * N
    pool = _hicache_pool("mha", "layer_first")
    hc = hicache_store("mha", pool, model_name=model)
    dest = pool.alloc(N * PAGE_SIZE)
    assert dest is not None
    assert hc.batch_get_v1(keys, dest) == [True] * N
    assert read_page_bytes(pool, dest) == expected


# ---------------------------------------------------------------------- the format record
@pytest.mark.parametrize(
    ("what", "other"),
    [("layout order", {"layout": "page_first_direct"}), ("dtype", {"dtype": torch.float16}),
     ("heads (another TP size)", {"heads": 1}),
     ("TP size, same pool shape (SGLang's MHA names hold the TP rank only)", {"cfg": {"tp_size": 2}}),
     ("attention-CP rank (not in SGLang's names)", {"cfg": {"attn_cp_rank": 1, "attn_cp_size": 2}})],
)
def test_another_format_in_the_namespace_is_a_counted_miss(
    hicache_store: Callable[..., MooncakeStore], what: str, other: dict[str, Any],
) -> None:
    """Same object names and the same page size (Mooncake's size check cannot tell them apart):
    the record says which pool owns the namespace; the other one misses and refuses writes."""
    model = _model()
    first = _hicache_pool("mha", "page_first")
    opts = dict(other)
    cfg = opts.pop("cfg", {})
    owner_cfg = {"attn_cp_rank": 0, "attn_cp_size": 2} if "attn_cp_size" in cfg else {}
    writer = hicache_store("mha", first, model_name=model, **owner_cfg)
    keys = _keys(2)
    idx, _ = fill_random_pages(first, 2, seed=4)
    assert writer.batch_set_v1(keys, idx) == [True, True]
    heads = opts.pop("heads", HEADS)
    pool = HostKVPool(16 * PAGE_SIZE, PAGE_SIZE, LAYERS, heads, HEAD_DIM * (HEADS // heads),
                      opts.pop("dtype", torch.bfloat16), opts.pop("layout", "page_first"))
    assert pool.page_bytes == first.page_bytes
    reader = hicache_store("mha", pool, model_name=model, **cfg)
    assert reader.object_keys(keys) == writer.object_keys(keys), what  # the very same objects
    assert reader.exists_many(keys) == [False, False], what
    assert reader.batch_exists(keys) == 0, what
    dest = pool.alloc(2 * PAGE_SIZE)
    assert dest is not None
    assert reader.batch_get_v1(keys, dest) == [False, False], what
    assert not bool(pool.kv_buffer.view(torch.uint8).any()), what
    assert reader.get(keys[0]) is None and reader.batch_get(keys) == [None, None], what
    assert reader.batch_set_v1(keys, dest) == [False, False], what
    assert reader.set(keys[0], pool.read_page(0)) is False, what
    stats = reader.get_stats()
    assert stats["format_mismatch"] is not None and stats["errors"]["format_mismatch"] >= 10, what
    assert writer.exists_many(keys) == [True, True] and writer.get_stats()["format_mismatch"] is None


def test_a_format_change_while_attached_turns_reads_into_counted_misses(
    hicache_store: Callable[..., MooncakeStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record is hard-pinned (eviction and remove_all leave it); removed by force all the same,
    it is claimed again on the next existence check. Removed by force and claimed by a node of
    another layout: the attached node serves misses and refuses writes, counted, from then on."""
    model = _model()
    pool = _hicache_pool("mha", "page_first")
    a = hicache_store("mha", pool, model_name=model)
    keys = _keys(2)
    idx, _ = fill_random_pages(pool, 2, seed=5)
    assert a.batch_set_v1(keys, idx) == [True, True]
    assert a.exists_many(keys) == [True, True]
    record = a.get_stats()["format_record"]
    assert a.raw_client.remove_all() >= 0
    assert a.raw_client.is_exist(record) == 1  # pinned: remove_all leaves it
    idx, _ = fill_random_pages(pool, 2, seed=6)
    assert a.batch_set_v1(keys, idx) == [True, True]
    assert a.raw_client.remove(record, True) == 0
    # Gone: the next existence check claims it again before answering.
    assert a.exists_many(keys) == [True, True]
    assert a.raw_client.is_exist(record) == 1

    assert a.raw_client.remove(record, True) == 0
    other_pool = _hicache_pool("mha", "page_first_direct")
    hicache_store("mha", other_pool, model_name=model)  # claims the namespace for its layout
    # (that node cannot tell a's pages from its own: the names carry no layout; hence the pin)
    import hicache_mooncake.format_record as format_record

    monkeypatch.setattr(format_record, "RECHECK_S", 0.0)  # a present record's value is re-read every 5 s
    assert a.get_stats()["format_mismatch"] is None
    assert a.exists_many(keys) == [False, False]
    dest = pool.alloc(2 * PAGE_SIZE)
    assert dest is not None
    assert a.batch_get_v1(keys, dest) == [False, False]
    assert a.batch_set_v1(keys, idx) == [False, False]
    assert a.get(keys[0]) is None
    stats = a.get_stats()
    assert stats["errors"]["format_mismatch"] == 2 + 2 + 2 + 1
    assert "-clthd " in stats["format_mismatch"]  # page_first_direct; a is page_first (ctlhd)


def test_clear_removes_the_record_so_another_format_may_take_the_namespace(
    hicache_store: Callable[..., MooncakeStore],
) -> None:
    model = _model()
    hicache_store("mha", _hicache_pool("mha", "page_first"), model_name=model)
    other = hicache_store("mha", _hicache_pool("mha", "page_first_direct"), model_name=model)
    assert other.get_stats()["format_mismatch"] is not None
    other.clear()  # remove_all leaves pinned objects; clear() then drops this namespace's record
    (key,) = _keys(1)
    assert other.exists(key) is False  # the check claims the namespace for this pool
    assert other.get_stats()["format_mismatch"] is None
    idx, _ = fill_random_pages(other.mem_pool_host, 1, seed=7)
    assert other.batch_set_v1([key], idx) == [True]


def test_no_flat_io_before_a_pool_names_the_format(hicache_store: Callable[..., MooncakeStore]) -> None:
    store = hicache_store("mha", model_name=_model())
    (key,) = _keys(1)
    page = torch.zeros(64, dtype=torch.bfloat16)
    assert store.set(key, page) is False
    assert store.get(key) is None
    assert store.exists(key) is False
    assert store.get_stats()["errors"]["no_pool"] == 3
