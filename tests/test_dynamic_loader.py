"""SGLang's ``dynamic`` backend: keys, errors that say what to fix, allowlist, SGLang-style classes.

Backend classes are real modules written to a temporary ``sys.path`` entry and imported by
``module_path``, exactly as an operator's own package would be.
"""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hicache_core import (
    BackendConfigError,
    BackendLoadError,
    HiCacheStorage,
    HiCacheStorageConfig,
    HostKVPool,
    create_backend,
)
from hicache_core.plugins.dynamic import DYNAMIC_ALLOWLIST_ENV, check_dynamic_allowed, parse_dynamic_config

SGLANG_STYLE = """
import torch

CALLS = []

class Store:
    '''Written for SGLang: no hicache import, no base class, SGLang's constructor.'''
    def __init__(self, storage_config, kwargs):
        CALLS.append(("init", storage_config, kwargs))
        self.config = storage_config
        self.pages = {}
        self.v1_calls = 0
    def get(self, key, target_location=None, target_sizes=None):
        data = self.pages.get(key)
        if data is None:
            return None
        if target_location is not None:
            target_location.view(-1).view(torch.uint8).copy_(data)
            return target_location
        return data.clone()
    def set(self, key, value=None, target_location=None, target_sizes=None):
        self.pages[key] = value.contiguous().view(-1).view(torch.uint8).clone()
        return True
    def exists(self, key):
        return key in self.pages
    def batch_exists(self, keys, extra_info=None):
        return [k in self.pages for k in keys]   # a per-key list, as some backends answer
    def close(self):
        CALLS.append(("close",))

class NoneV1(Store):
    '''Claims interface_v1 but inherits SGLang's base behaviour: the v1 calls return None.'''
    def batch_get_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        return None
    def batch_set_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        return None

class ShortV1(Store):
    def batch_get_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        return [True]          # one entry, whatever the batch size
    def batch_set_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        return [True]

class NativeV1(Store):
    def register_mem_pool_host(self, pool):
        self.pool = pool
    def batch_get_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        out = []
        for i, k in enumerate(keys):
            data = self.pages.get(k)
            if data is not None:
                self.pool.set_from_flat_data_page(int(host_indices[i * self.pool.page_size]), data.view(self.pool.dtype))
            out.append(data is not None)
        return out
    def batch_set_v1(self, keys, host_indices, extra_info=None):
        self.v1_calls += 1
        for i, k in enumerate(keys):
            self.set(k, self.pool.get_data_page(int(host_indices[i * self.pool.page_size])))
        return [True] * len(keys)

class OldExists(Store):
    def batch_exists(self, keys):        # written before extra_info existed
        return sum(1 for _ in keys)

class BuggyExists(Store):
    def batch_exists(self, keys, extra_info=None):
        CALLS.append(("batch_exists", extra_info))
        return len(extra_info)            # a bug in the backend: TypeError

class ConfigOnly:
    def __init__(self, storage_config):
        self.config = storage_config
    def get(self, key, target_location=None, target_sizes=None):
        return None
    def set(self, key, value=None, target_location=None, target_sizes=None):
        return True
    def exists(self, key):
        return False

class NotAStore:
    def __init__(self, storage_config, kwargs):
        pass
    def get(self, key):
        return None

class BadValue(Store):
    def __init__(self, storage_config, kwargs):
        raise ValueError("bucket name is empty")

class Crashes(Store):
    def __init__(self, storage_config, kwargs):
        raise RuntimeError("cannot reach the metadata server")

def not_a_class(storage_config, kwargs):
    return None
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module on a temporary sys.path entry; returns its unique import name."""
    root = tmp_path / "mods"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(DYNAMIC_ALLOWLIST_ENV, raising=False)
    names: list[str] = []

    def _write(source: str) -> str:
        name = f"sglang_store_{uuid.uuid4().hex[:8]}"
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield _write
    for name in names:
        sys.modules.pop(name, None)


def dynamic(module_path: str, class_name: str, **extra: Any) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(
        model_name="m",
        extra_config={"backend_name": "mine", "module_path": module_path, "class_name": class_name, **extra},
    )


def small_pool() -> HostKVPool:
    return HostKVPool(size=64, page_size=4, layer_num=2, head_num=2, head_dim=4, dtype=torch.float16)


def fill(pool: HostKVPool, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    pages = []
    for i, p in enumerate(pool.indices_to_pages(idx)):
        page = torch.full((pool.page_bytes // 2,), float(i + 1), dtype=torch.float16)
        pool.write_page(p, page)
        pages.append(page)
    return idx, pages


# ---------------------------------------------------------------------- configuration errors
def test_missing_keys_are_named() -> None:
    with pytest.raises(BackendConfigError, match="module_path, class_name"):
        create_backend("dynamic", HiCacheStorageConfig(extra_config={"backend_name": "x"}))
    with pytest.raises(BackendConfigError, match="backend_name, module_path, class_name"):
        create_backend("dynamic", HiCacheStorageConfig())


@pytest.mark.parametrize(
    ("extra", "match"),
    [({"module_path": 5}, "module_path must be a string"), ({"interface_v1": "yes"}, "interface_v1 must be 0 or 1")],
)
def test_bad_values_are_named(extra: dict[str, Any], match: str) -> None:
    base = {"backend_name": "b", "module_path": "m", "class_name": "C"}
    with pytest.raises(BackendConfigError, match=match):
        parse_dynamic_config({**base, **extra})


def test_interface_v1_forms() -> None:
    base = {"backend_name": "b", "module_path": "m", "class_name": "C"}
    for value, expect in ((1, True), ("1", True), ("true", True), (0, False), ("False", False)):
        assert parse_dynamic_config({**base, "interface_v1": value}).interface_v1 is expect
    assert parse_dynamic_config(base).interface_v1 is False


def test_failed_import_names_the_module() -> None:
    with pytest.raises(BackendLoadError, match=r"importing module 'no_such_pkg_xyz\.store' failed: ModuleNotFoundError"):
        create_backend("dynamic", dynamic("no_such_pkg_xyz.store", "Store"))


def test_module_that_raises_on_import_shows_the_error(module: Callable[[str], str]) -> None:
    mod = module("raise RuntimeError('libstore.so not found')\n")
    with pytest.raises(BackendLoadError, match=r"failed: RuntimeError: libstore\.so not found"):
        create_backend("dynamic", dynamic(mod, "Store"))


def test_missing_class_says_check_the_name(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    with pytest.raises(BackendLoadError, match="has no attribute 'Stor'; check the class name"):
        create_backend("dynamic", dynamic(mod, "Stor"))


def test_not_a_class_is_refused(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    with pytest.raises(BackendLoadError, match="not a class"):
        create_backend("dynamic", dynamic(mod, "not_a_class"))


def test_class_without_storage_methods_is_refused(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    with pytest.raises(BackendLoadError, match="not a storage backend: it lacks set, exists"):
        create_backend("dynamic", dynamic(mod, "NotAStore"))


def test_constructor_errors(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    with pytest.raises(BackendConfigError, match="bucket name is empty"):
        create_backend("dynamic", dynamic(mod, "BadValue"))
    with pytest.raises(BackendLoadError, match="failed to start: RuntimeError: cannot reach"):
        create_backend("dynamic", dynamic(mod, "Crashes"))


def test_interface_v1_without_v1_methods_is_refused(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    with pytest.raises(BackendLoadError, match="interface_v1 is set but Store lacks batch_get_v1"):
        create_backend("dynamic", dynamic(mod, "Store", interface_v1=1))
    # The instance was built before it was refused: it is closed, not leaked.
    assert sys.modules[mod].CALLS[-1] == ("close",)


# ---------------------------------------------------------------------- allowlist
def test_allowlist_permits_listed_prefixes(module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    mod = module(SGLANG_STYLE)
    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, f"company_stores, {mod}")
    backend = create_backend("dynamic", dynamic(mod, "Store"))
    assert backend.exists("k") is False


def test_allowlist_refuses_others(module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    mod = module("raise SystemExit('must never be imported')\n")
    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, "company_stores")
    with pytest.raises(BackendLoadError, match=f"{mod}.*not allowed by {DYNAMIC_ALLOWLIST_ENV}"):
        create_backend("dynamic", dynamic(mod, "Store"))
    assert mod not in sys.modules, "a refused module must not be imported"


def test_allowlist_set_but_empty_refuses_all(module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    mod = module(SGLANG_STYLE)
    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, "")
    with pytest.raises(BackendLoadError, match="not allowed"):
        create_backend("dynamic", dynamic(mod, "Store"))


def test_allowlist_prefix_matches_whole_package_names() -> None:
    env = {DYNAMIC_ALLOWLIST_ENV: "acme"}
    check_dynamic_allowed("acme", env)
    check_dynamic_allowed("acme.store.v2", env)
    with pytest.raises(BackendLoadError):
        check_dynamic_allowed("acmeevil.store", env)
    check_dynamic_allowed("acmeevil.store", {})  # unset: anything, as in SGLang


# ---------------------------------------------------------------------- SGLang-written classes
def test_sglang_constructor_gets_config_and_kwargs(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    backend = create_backend("dynamic", dynamic(mod, "Store", bucket="b1"))
    assert isinstance(backend, HiCacheStorage)
    (_, config, kwargs) = sys.modules[mod].CALLS[-1]
    assert isinstance(config, HiCacheStorageConfig) and kwargs == {}
    assert config.extra_config == {"bucket": "b1"}, "dynamic keys are stripped, backend keys kept"


def test_config_only_constructor(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    backend = create_backend("dynamic", dynamic(mod, "ConfigOnly"))
    assert backend.get("k") is None and backend.exists("k") is False


def test_generic_path_serves_v1_and_batch_exists_list(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    pool = small_pool()
    backend = create_backend("dynamic", dynamic(mod, "Store"), mem_pool_host=pool)
    assert backend.capabilities.zero_copy_v1 is False
    idx, pages = fill(pool, 3)
    assert backend.batch_set_v1(["a", "b", "c"], idx) == [True, True, True]
    assert backend.batch_exists(["a", "b", "x", "c"]) == 2  # the backend's per-key list, counted
    dest = pool.alloc(3 * pool.page_size)
    assert dest is not None
    assert backend.batch_get_v1(["a", "x", "c"], dest) == [True, False, True]
    read = [pool.read_page(p) for p in pool.indices_to_pages(dest)]
    assert torch.equal(read[0], pages[0]) and torch.equal(read[2], pages[2])


def test_batch_exists_with_or_without_extra_info_is_called_once(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    assert create_backend("dynamic", dynamic(mod, "OldExists")).batch_exists(["a", "b"]) == 2
    buggy = create_backend("dynamic", dynamic(mod, "BuggyExists"))
    with pytest.raises(TypeError):  # the backend's own error surfaces (the guard counts it)
        buggy.batch_exists(["a", "b"])
    calls = [c for c in sys.modules[mod].CALLS if c[0] == "batch_exists"]
    assert len(calls) == 1 and calls[0][1] is not None, "called once, always with an extra_info"


@pytest.mark.parametrize("cls", ["NoneV1", "ShortV1"])
def test_v1_returning_none_or_short_falls_back_loudly(
    module: Callable[[str], str], cls: str, caplog: pytest.LogCaptureFixture
) -> None:
    mod = module(SGLANG_STYLE)
    pool = small_pool()
    backend = create_backend("dynamic", dynamic(mod, cls, interface_v1=1), mem_pool_host=pool)
    idx, pages = fill(pool, 2)
    with caplog.at_level(logging.ERROR):
        stored = backend.batch_set_v1(["a", "b"], idx)
    assert stored == [True, True], "never None where a list is promised"
    assert any("generic get/set path" in r.getMessage() for r in caplog.records)
    dest = pool.alloc(2 * pool.page_size)
    assert dest is not None
    got = backend.batch_get_v1(["a", "b"], dest)
    assert got == [True, True]
    assert [torch.equal(pool.read_page(p), pg) for p, pg in zip(pool.indices_to_pages(dest), pages)] == [True, True]
    inner = backend.inner  # type: ignore[attr-defined]
    assert inner.v1_calls == 1, "after the first bad answer the native v1 is not asked again"
    assert sum("generic get/set path" in r.getMessage() for r in caplog.records) == 1, "logged once"


def test_native_v1_is_used_when_declared(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    pool = small_pool()
    backend = create_backend("dynamic", dynamic(mod, "NativeV1", interface_v1="1"), mem_pool_host=pool)
    assert backend.capabilities.zero_copy_v1 is True
    idx, pages = fill(pool, 2)
    assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
    dest = pool.alloc(2 * pool.page_size)
    assert dest is not None
    assert backend.batch_get_v1(["a", "b"], dest) == [True, True]
    assert backend.inner.v1_calls == 2  # type: ignore[attr-defined]
    assert all(torch.equal(pool.read_page(p), pg) for p, pg in zip(pool.indices_to_pages(dest), pages))


def test_interface_v1_zero_ignores_native_methods(module: Callable[[str], str]) -> None:
    mod = module(SGLANG_STYLE)
    pool = small_pool()
    backend = create_backend("dynamic", dynamic(mod, "NativeV1", interface_v1=0), mem_pool_host=pool)
    idx, _ = fill(pool, 2)
    assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
    assert backend.inner.v1_calls == 0  # type: ignore[attr-defined]
