"""The scheduler side and the guarded store, over the real file backend (no vLLM needed).

Requests and scheduler outputs are plain objects with the attribute names vLLM 0.32 gives
them (``Request``, ``SchedulerOutput``); the engine tests run the same code inside vLLM.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hicache_vllm.identity import storage_config
from hicache_vllm.layout import VllmKVLayout, staging_pool
from hicache_vllm.scheduler import SchedulerSide
from hicache_vllm.settings import ConnectorConfigError, ConnectorSettings
from hicache_vllm.store import BREAK_AFTER, GuardedStore

from hicache_core.keys import page_hashes
from hicache_core.memory.pages import page_view

B = 4
LAYOUT = VllmKVLayout("CPU_ATTN", ("l0", "l1"), num_kv_heads=2, head_size=8, block_size=B, dtype=torch.float32)


def _store(path: Path, extra: dict[str, Any] | None = None, pages: int = 8, backend: str = "file",
           model: str = "org/tiny") -> GuardedStore:
    cfg = storage_config(model, {"path": str(path), **(extra or {})})
    return GuardedStore(backend, cfg, staging_pool(LAYOUT, pages))


def _request(tokens: list[int], rid: str = "r1", **kw: Any) -> SimpleNamespace:
    return SimpleNamespace(request_id=rid, all_token_ids=tokens, num_tokens=len(tokens), num_computed_tokens=0,
                           cache_salt=kw.get("cache_salt"), mm_features=kw.get("mm_features", []),
                           lora_request=kw.get("lora_request"), prompt_embeds=None)


def _fill(store: GuardedStore, pages: list[int], value: float) -> None:
    for p in pages:
        page_view(store.pool, p).fill_(value + p)


def test_store_round_trip_and_vllm_namespace(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.attached
    assert store.namespace == "hc1.vllm-org-tiny.mha-fp32-l2h2d8-p4-clthd.tp0of1"
    hashes = page_hashes(list(range(3 * B)), B)
    _fill(store, [0, 1, 2], 1.0)
    assert store.save(hashes, [0, 1, 2]) == [True, True, True]
    assert store.leading_hits(hashes) == 3
    _fill(store, [5, 6, 7], 0.0)
    assert store.load(hashes, [5, 6, 7]) == [True, True, True]
    for src, dst in zip([0, 1, 2], [5, 6, 7]):
        assert torch.equal(page_view(store.pool, src), page_view(store.pool, dst))
    # Another model (or SGLang's own pools, which carry no engine tag) never sees these pages.
    other = _store(tmp_path, model="org/other")
    assert other.leading_hits(hashes) == 0


def test_an_unknown_backend_name_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError, match=r"unknown storage backend 'no-such-backend'; installed: .*file"):
        _store(tmp_path, backend="no-such-backend")


def test_a_backend_that_cannot_start_is_no_hits(tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("master unreachable")

    cfg = storage_config("org/tiny", {"path": str(tmp_path)})
    store = GuardedStore("file", cfg, staging_pool(LAYOUT, 2), factory=broken)
    assert not store.attached and "master unreachable" in (store.last_error or "")
    assert store.leading_hits(["a" * 64]) == 0
    assert store.load(["a" * 64], [0]) == [False]
    assert store.save(["a" * 64], [0]) == [False]


def test_a_failing_backend_is_misses_then_detached(tmp_path: Path) -> None:
    store = _store(tmp_path, {"fault_injection": {"fail_all": True}})
    hashes = page_hashes(list(range(2 * B)), B)
    for _ in range(BREAK_AFTER):
        assert store.leading_hits(hashes) == 0
    assert not store.attached  # the breaker opened: no more calls for a while
    assert store.counters["errors"] == BREAK_AFTER
    assert store.save(hashes, [0, 1]) == [False, False]
    assert store.counters["errors"] == BREAK_AFTER  # not even called


def test_lookup_leaves_the_last_token_and_plans_the_load(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tokens = list(range(100, 100 + 3 * B))  # exactly 3 pages
    hashes = page_hashes(tokens, B)
    store.save(hashes, [0, 1, 2])
    side = SchedulerSide(store, B)
    req = _request(tokens)
    # 3 pages stored, but the last token must be computed: 2 pages (8 tokens) from L3.
    assert side.num_new_matched_tokens(req, 0) == (2 * B, False)
    # vLLM already had the first page: L3 gives the second only.
    assert side.num_new_matched_tokens(req, B) == (B, False)
    side.after_alloc(req, [7, 8, 9], B)
    plan = side.build(SimpleNamespace(num_scheduled_tokens={}, scheduled_new_reqs=[],
                                      scheduled_cached_reqs=SimpleNamespace(req_ids=[], new_block_ids=[],
                                                                            num_computed_tokens=[])))
    assert [(t.hashes, t.block_ids) for t in plan.loads] == [([hashes[1]], [8])]


def test_salted_and_multimodal_requests(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tokens = list(range(2 * B + 1))
    store.save(page_hashes(tokens, B), [0, 1])
    side = SchedulerSide(store, B)
    assert side.num_new_matched_tokens(_request(tokens), 0) == (2 * B, False)
    assert side.num_new_matched_tokens(_request(tokens, "r2", cache_salt="tenant-a"), 0) == (0, False)
    assert side.num_new_matched_tokens(_request(tokens, "r3", mm_features=[object()]), 0) == (0, False)
    assert side.num_new_matched_tokens(_request(tokens, "r4", lora_request=object()), 0) == (0, False)


def test_saves_follow_computed_tokens_once_each(tmp_path: Path) -> None:
    side = SchedulerSide(_store(tmp_path), B)
    tokens = list(range(2 * B + 2))
    req = _request(tokens)
    side.after_alloc(req, [5, 6, 7], 0)
    new = SimpleNamespace(req_id="r1", block_ids=([5, 6, 7],), num_computed_tokens=0)
    empty_cached = SimpleNamespace(req_ids=[], new_block_ids=[], num_computed_tokens=[])
    # A chunked prefill of 6 tokens: only page 0 is complete after this step.
    plan = side.build(SimpleNamespace(num_scheduled_tokens={"r1": 6}, scheduled_new_reqs=[new],
                                      scheduled_cached_reqs=empty_cached))
    hashes = page_hashes(tokens, B)
    assert [(t.hashes, t.block_ids) for t in plan.saves] == [([hashes[0]], [5])]
    cached = SimpleNamespace(req_ids=["r1"], new_block_ids=[None], num_computed_tokens=[6], resumed_req_ids=set())
    plan = side.build(SimpleNamespace(num_scheduled_tokens={"r1": 4}, scheduled_new_reqs=[],
                                      scheduled_cached_reqs=cached))
    assert [(t.hashes, t.block_ids) for t in plan.saves] == [([hashes[1]], [6])]
    # A second request with the same prefix does not write the same pages again.
    side.after_alloc(_request(tokens, "r2"), [1, 2, 3], 0)
    new2 = SimpleNamespace(req_id="r2", block_ids=([1, 2, 3],), num_computed_tokens=0)
    plan = side.build(SimpleNamespace(num_scheduled_tokens={"r2": 10}, scheduled_new_reqs=[new2],
                                      scheduled_cached_reqs=empty_cached))
    assert plan.saves == []


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({}, "needs kv_connector_extra_config.backend"),
        ({"backend": "file", "path": "/x"}, "unknown kv_connector_extra_config key"),
        ({"backend": "file", "backend_config": "path=/x"}, "must be an object"),
        ({"backend": "file", "staging_mib": 0}, "positive integer"),
        ({"backend": "file", "save": "maybe"}, "true or false"),
    ],
)
def test_bad_extra_config_says_what_to_write(extra: dict[str, Any], why: str) -> None:
    with pytest.raises(ConnectorConfigError, match=why):
        ConnectorSettings.from_extra(extra)
    ok = ConnectorSettings.from_extra({"backend": "file", "backend_config": {"path": "/x"}, "save": "false"})
    assert ok.backend == "file" and ok.backend_config == {"path": "/x"} and not ok.save


def test_a_request_can_opt_out_of_loads_and_saves(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tokens = list(range(2 * B + 1))
    store.save(page_hashes(tokens, B), [0, 1])
    side = SchedulerSide(store, B)
    no_load = _request(tokens, "r1")
    no_load.kv_transfer_params = {"hicache": {"load": False}}
    assert side.num_new_matched_tokens(no_load, 0) == (0, False)
    no_save = _request(list(range(50, 50 + 2 * B)), "r2")
    no_save.kv_transfer_params = {"hicache": {"save": False}}
    side.after_alloc(no_save, [3, 4], 0)
    new = SimpleNamespace(req_id="r2", block_ids=([3, 4],), num_computed_tokens=0)
    plan = side.build(SimpleNamespace(num_scheduled_tokens={"r2": 2 * B}, scheduled_new_reqs=[new],
                                      scheduled_cached_reqs=SimpleNamespace(req_ids=[], new_block_ids=[],
                                                                            num_computed_tokens=[])))
    assert plan.saves == []
