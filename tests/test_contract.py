"""The storage contract: version refusal, ABC defaults and return conventions, config, capabilities."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pytest
import torch

from hicache_core import (
    CONTRACT_VERSION,
    BackendRegistry,
    BackendSpec,
    Capabilities,
    ContractVersionError,
    HiCacheError,
    HiCacheStorage,
    HiCacheStorageConfig,
    HostKVPool,
    create_backend,
)
from hicache_core.plugins.factory import check_contract_version
from hicache_core.version import format_contract_version, parse_contract_version


class MemStore(HiCacheStorage):
    """The smallest legal backend: get/set/exists on a dict."""

    def __init__(self, config: HiCacheStorageConfig | None = None) -> None:
        super().__init__(config)
        self.pages: dict[str, torch.Tensor] = {}

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        page = self.pages.get(key)
        if page is None:
            return None
        if isinstance(target_location, torch.Tensor):
            dest, src = target_location.view(-1).view(torch.uint8), page.view(-1).view(torch.uint8)
            if dest.numel() != src.numel():
                return None  # a page of another size is a miss, never an exception
            dest.copy_(src)
            return target_location
        return page.clone()

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        self.pages[key] = value.clone()
        return True

    def exists(self, key: str) -> bool:
        return key in self.pages


class FutureStore(MemStore):
    contract_version: ClassVar[str] = "2.0"


class NewerMinorStore(MemStore):
    contract_version: ClassVar[str] = f"{CONTRACT_VERSION[0]}.{CONTRACT_VERSION[1] + 3}"


class GarbledStore(MemStore):
    contract_version: ClassVar[str] = "version one"


def registry_with(**classes: type) -> BackendRegistry:
    registry = BackendRegistry(entry_points_override=[], environ={})
    for name, cls in classes.items():
        registry.register(BackendSpec(name=name, target=f"{__name__}:{cls.__qualname__}"))
    return registry


# ---------------------------------------------------------------------- contract version
def test_other_major_version_is_refused_naming_both_versions() -> None:
    with pytest.raises(ContractVersionError) as err:
        check_contract_version(FutureStore, "future")
    message = str(err.value)
    assert "2.0" in message and format_contract_version(CONTRACT_VERSION) in message
    assert "future" in message and "install" in message


def test_refused_through_the_factory() -> None:
    with pytest.raises(ContractVersionError, match=r"written for storage contract 2\.0.*speaks 1\.0"):
        create_backend("future", registry=registry_with(future=FutureStore))


def test_newer_minor_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        backend = create_backend("newer", registry=registry_with(newer=NewerMinorStore))
    assert isinstance(backend, NewerMinorStore)
    assert any("newer than this core" in r.getMessage() for r in caplog.records)


def test_garbled_version_is_refused() -> None:
    with pytest.raises(ContractVersionError, match=r"MAJOR\.MINOR"):
        check_contract_version(GarbledStore, "garbled")


def test_class_without_a_version_is_taken_as_sglang_contract_1() -> None:
    class Bare:
        pass

    check_contract_version(Bare, "bare")  # no exception


@pytest.mark.parametrize(("value", "expect"), [("1.0", (1, 0)), ("1", (1, 0)), ((1, 2), (1, 2)), (3, (3, 0)), (" 2.7 ", (2, 7))])
def test_parse_contract_version(value: object, expect: tuple[int, int]) -> None:
    assert parse_contract_version(value) == expect


@pytest.mark.parametrize("value", [True, "1.0.0", "", "a.b", None, (1, "0")])
def test_parse_contract_version_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR"):
        parse_contract_version(value)


# ---------------------------------------------------------------------- the ABC
def test_abc_requires_get_set_exists() -> None:
    class Incomplete(HiCacheStorage):
        def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_optional_operations_default_loudly() -> None:
    store = MemStore()
    with pytest.raises(NotImplementedError, match="delete"):
        store.delete("k")
    with pytest.raises(NotImplementedError, match="clear"):
        store.clear()
    assert store.get_stats() is None
    store.health_check()  # reaches the store through exists; no exception
    assert store.capabilities == Capabilities()
    assert store.contract_version == "1.0"


def test_default_batch_conventions() -> None:
    store = MemStore()
    a, b = torch.ones(4), torch.zeros(4)
    assert store.batch_set(["a", "b"], [a, b]) is True
    assert store.batch_set(["c", "d"], [a, "not a tensor"]) is False  # True only when every page is stored
    assert store.batch_exists(["a", "b", "x", "c"]) == 2
    assert store.exists_many(["a", "x", "c"]) == [True, False, True]
    got = store.batch_get(["a", "x"])
    assert isinstance(got, list) and len(got) == 2 and got[1] is None
    assert got[0] is not None and torch.equal(got[0], a)


def test_v1_without_a_pool_or_with_wrong_indices_is_a_programming_error() -> None:
    store = MemStore()
    with pytest.raises(HiCacheError, match="register_mem_pool_host"):
        store.batch_get_v1(["a"], torch.arange(4))
    pool = HostKVPool(size=32, page_size=4, layer_num=1, head_num=1, head_dim=4, dtype=torch.float32)
    store.register_mem_pool_host(pool)
    with pytest.raises(ValueError, match="2 keys need 8 host indices"):
        store.batch_set_v1(["a", "b"], torch.arange(4))


def test_default_v1_round_trip_and_wrong_size_page_is_a_miss() -> None:
    store = MemStore()
    pool = HostKVPool(size=32, page_size=4, layer_num=1, head_num=2, head_dim=4, dtype=torch.float32)
    store.register_mem_pool_host(pool)
    idx = pool.alloc(8)
    assert idx is not None
    for n, p in enumerate(pool.indices_to_pages(idx)):
        pool.write_page(p, torch.full((pool.page_bytes // 4,), float(n + 7)))
    assert store.batch_set_v1(["a", "b"], idx) == [True, True]
    store.pages["b"] = torch.zeros(3)  # a stored page of the wrong size
    dest = pool.alloc(12)
    assert dest is not None
    assert store.batch_get_v1(["a", "b", "missing"], dest) == [True, False, False]
    assert torch.equal(pool.read_page(pool.indices_to_pages(dest)[0]), pool.read_page(pool.indices_to_pages(idx)[0]))


class CountingStore(MemStore):
    """``batch_get`` answers as SGLang's Mooncake store: the count of leading pages read."""

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None) -> Any:
        count = 0
        for key, target in zip(keys, target_locations):
            if self.get(key, target) is None:
                break
            count += 1
        return count


def test_default_v1_takes_a_count_from_batch_get_as_leading_hits() -> None:
    store = CountingStore()
    pool = HostKVPool(size=32, page_size=4, layer_num=1, head_num=2, head_dim=4, dtype=torch.float32)
    store.register_mem_pool_host(pool)
    idx = pool.alloc(8)
    assert idx is not None
    for n, p in enumerate(pool.indices_to_pages(idx)):
        pool.write_page(p, torch.full((pool.page_bytes // 4,), float(n + 7)))
    assert store.batch_set_v1(["a", "b"], idx) == [True, True]
    dest = pool.alloc(12)
    assert dest is not None
    assert store.batch_get_v1(["a", "b", "missing"], dest) == [True, True, False]
    src_pages, dest_pages = pool.indices_to_pages(idx), pool.indices_to_pages(dest)
    for s, d in zip(src_pages, dest_pages):
        assert torch.equal(pool.read_page(d), pool.read_page(s))


def test_sglang_constructor_form_is_accepted_by_the_base() -> None:
    config = HiCacheStorageConfig(model_name="m")
    store = MemStore(config)
    assert store.config is config and store.mem_pool_host is None


# ---------------------------------------------------------------------- config and capabilities
def test_namespace_suffix() -> None:
    assert HiCacheStorageConfig(model_name="org/llama", tp_rank=1, tp_size=4).namespace_suffix() == "_org-llama_1_4"
    assert HiCacheStorageConfig(model_name="org/ds", tp_rank=3, tp_size=8, is_mla_model=True).namespace_suffix() == "_org-ds"
    # SGLang 0.5.23 HiCacheFile's rule: PP as _{pp_size}_{pp_rank}, attention CP, then DCP.
    assert HiCacheStorageConfig(tp_rank=0, tp_size=2, pp_rank=1, pp_size=2).namespace_suffix() == "__0_2_2_1"
    cp = HiCacheStorageConfig(model_name="m", attn_cp_rank=1, attn_cp_size=2)
    assert cp.namespace_suffix() == "_m_0_1_cp1_2"
    dcp = HiCacheStorageConfig(model_name="m", is_mla_model=True, tp_rank=1, tp_size=2, dcp_size=2, dcp_rank=1,
                               logical_page_size=64)
    assert dcp.namespace_suffix() == "_m_tp2_dcp1_2_page64"


def test_config_validates_dcp_as_sglang_does() -> None:
    with pytest.raises(ValueError, match="MLA"):
        HiCacheStorageConfig(dcp_size=2, dcp_rank=0, logical_page_size=64)
    with pytest.raises(ValueError, match="contiguous DCP"):
        HiCacheStorageConfig(is_mla_model=True, tp_size=2, tp_rank=1, dcp_size=2, dcp_rank=0, logical_page_size=64)
    with pytest.raises(ValueError, match="logical_page_size"):
        HiCacheStorageConfig(is_mla_model=True, tp_size=2, tp_rank=1, dcp_size=2, dcp_rank=1, logical_page_size=63)


def test_writer_rank() -> None:
    assert HiCacheStorageConfig(tp_rank=3, is_mla_model=False).is_writer_rank is True
    assert HiCacheStorageConfig(tp_rank=0, is_mla_model=True).is_writer_rank is True
    assert HiCacheStorageConfig(tp_rank=1, is_mla_model=True).is_writer_rank is False


def test_extra_is_a_copy_and_never_none() -> None:
    config = HiCacheStorageConfig()
    assert config.extra() == {}
    config = HiCacheStorageConfig(extra_config={"a": 1})
    config.extra()["a"] = 2
    assert config.extra_config == {"a": 1}


def test_capabilities_names_and_dict() -> None:
    caps = Capabilities(zero_copy_v1=True, persistent=True, mla=False, sidecar_pools=False)
    assert caps.names() == ["zero_copy_v1", "persistent"]
    assert Capabilities().names() == ["mla", "sidecar_pools"]
    assert caps.to_dict()["shared"] is False and set(caps.to_dict()) >= {
        "zero_copy_v1", "delete", "clear", "persistent", "shared", "requires_page_layout", "mla",
    }
