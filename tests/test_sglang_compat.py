"""hicache's SGLang import shim: backend modules written for SGLang load without sglang.

What is tested here is the shim (``hicache_core.compat.sglang_shim``), with the two
third-party backends of ``tests/sglang_style`` (modules written against SGLang's API, not
SGLang's own classes). With sglang installed (``scripts/setup.sh --sglang``) the shim tests
hide it (``sglang_hidden``: a meta-path finder that refuses every ``sglang`` module the shim
does not serve, as an absent package would), and the "real sglang wins" tests use the real
package. Everything about SGLang's own classes, pools and controller is tested against the
real package in ``tests/sglang_real``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import torch
from _node_helpers import child_env

from hicache_core import (
    BackendLoadError,
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
    HostKVPool,
    create_backend,
)
from hicache_core.compat import sglang_shim
from hicache_core.keys import get_hash_str
from hicache_core.node.server import NodeProcess
from hicache_core.plugins.adapter import DuckTypedBackend
from hicache_core.testing import StorageConformanceTests


@dataclass(frozen=True)
class Style:
    """One backend written for SGLang: how an SGLang user names it, and its store key."""

    module: str
    class_name: str
    interface_v1: int
    store_key: str

    def extra(self, root: Path) -> dict[str, Any]:
        return {"backend_name": self.module, "module_path": f"sglang_style.{self.module}",
                "class_name": self.class_name, "interface_v1": self.interface_v1, self.store_key: str(root / "store")}


FILE = Style("file_store", "SGLangStyleFile", 0, "file_path")
BASE_RELIANT = Style("base_reliant_store", "BaseReliantStore", 1, "path")  # v1 = the base's None


def dynamic_config(style: Style, root: Path, **fields_: Any) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(model_name="org/compat-model", extra_config=style.extra(root), **fields_)


def _is_sglang(name: str) -> bool:
    return name == "sglang" or name.startswith("sglang.")


def _forget(prefixes: Sequence[str]) -> dict[str, ModuleType]:
    gone = {n: m for n, m in sys.modules.items() if any(n == p or n.startswith(p + ".") for p in prefixes)}
    for name in gone:
        del sys.modules[name]
    return gone


class _SGLangHidden(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: ``sglang`` modules are absent, except those the shim serves."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _is_sglang(fullname):
            return None
        shim = sglang_shim._finder
        if shim is not None and shim in sys.meta_path:
            spec = shim.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


@pytest.fixture
def sglang_hidden() -> Iterator[None]:
    """No sglang on this interpreter for the test (restored afterwards), and no shim yet."""
    sglang_shim.uninstall()
    saved = _forget(["sglang", "sglang_style"])
    hider = _SGLangHidden()
    sys.meta_path.insert(0, hider)
    try:
        assert not sglang_shim.real_sglang_available()
        yield
    finally:
        sys.meta_path.remove(hider)
        sglang_shim.uninstall()
        _forget(["sglang", "sglang_style"])
        sys.modules.update(saved)


@pytest.fixture
def real_sglang() -> Iterator[None]:
    """The real sglang package (skips, saying so, when it is not installed)."""
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed; bash scripts/setup.sh --sglang installs sglang==0.5.23")
    sglang_shim.uninstall()
    _forget(["sglang_style"])
    yield
    sglang_shim.uninstall()
    _forget(["sglang_style"])


# ====================================================================== the shim, sglang absent
def test_shim_is_installed_on_demand_and_logged(sglang_hidden: None, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    assert not sglang_shim.is_installed()
    with caplog.at_level(logging.INFO, logger="hicache_core.compat.sglang_shim"):
        backend = create_backend("dynamic", dynamic_config(FILE, tmp_path))
    assert sglang_shim.is_installed()
    assert any("SGLang shim" in r.getMessage() and "sglang_style.file_store" in r.getMessage()
               for r in caplog.records), "the shim announces itself at INFO"
    assert sglang_shim.is_shim_module(sys.modules["sglang.srt.mem_cache.hicache_storage"])
    assert sys.meta_path[-1].__class__.__name__ == "SGLangShimFinder", "last, so real modules win"
    assert backend.exists("nothing") is False


def test_shim_modules_are_sglang_names_on_hicache_classes(sglang_hidden: None) -> None:
    assert sglang_shim.install()
    from sglang.srt.mem_cache import hicache_storage as hs
    from sglang.srt.mem_cache import memory_pool_host as mph

    assert issubclass(hs.HiCacheStorage, HiCacheStorage), "SGLang's base is hicache's ABC underneath"
    assert hs.HiCacheStorageConfig is HiCacheStorageConfig
    assert hs.HiCacheStorageExtraInfo is HiCacheStorageExtraInfo
    assert hs.get_hash_str([1, 2, 3]) == get_hash_str([1, 2, 3])
    assert hs.STORAGE_BATCH_SIZE == 128
    assert mph.HostKVCache is HostKVPool
    mla = mph.MLATokenToKVPoolHost(size=16, page_size=4, layer_num=1, head_num=1, head_dim=4)
    mha = HostKVPool(size=16, page_size=4, layer_num=1, head_num=1, head_dim=4)
    assert isinstance(mha, mph.MHATokenToKVPoolHost) and not isinstance(mha, mph.MLATokenToKVPoolHost)
    assert isinstance(mla, mph.MLATokenToKVPoolHost) and mla.is_mla
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("sglang.srt.managers")  # only the storage modules are served


def test_shim_base_keeps_sglang_behaviour(sglang_hidden: None) -> None:
    assert sglang_shim.install()
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as SGLangBase

    class Minimal(SGLangBase):
        def __init__(self, marker: str) -> None:
            self.config = marker  # set before super().__init__(): must survive it
            super().__init__()

        def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
            return None

        def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
            return True

        def exists(self, key: str) -> bool:
            return key in ("a", "b", "d")

    m = Minimal("mine")
    assert m.config == "mine" and m.mem_pool_host is None
    assert m.batch_exists(["a", "b", "c", "d"]) == 2, "the base's batch_exists counts leading hits"
    assert m.batch_get_v1(["a"], torch.arange(4)) is None, "SGLang's base v1 returns None (the wart)"


def test_uninstall_is_complete(sglang_hidden: None) -> None:
    assert sglang_shim.install()
    importlib.import_module("sglang.srt.mem_cache.hicache_storage")
    sglang_shim.uninstall()
    assert not sglang_shim.is_installed()
    assert not any(_is_sglang(n) for n in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("sglang")


def test_shim_can_be_disabled(sglang_hidden: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sglang_shim.SHIM_ENV, "0")
    with pytest.raises(BackendLoadError, match="ModuleNotFoundError: No module named 'sglang'"):
        create_backend("dynamic", dynamic_config(FILE, tmp_path))
    assert not sglang_shim.is_installed()


def test_sglang_module_the_shim_lacks_is_named(sglang_hidden: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_more_sglang.py").write_text(
        "from sglang.srt.mem_cache.hicache_storage import HiCacheStorage\n"
        "from sglang.srt.distributed import get_tensor_model_parallel_rank\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = HiCacheStorageConfig(extra_config={"backend_name": "x", "module_path": "needs_more_sglang",
                                                "class_name": "X"})
    with pytest.raises(BackendLoadError, match=r"imports sglang\.srt\.distributed, which hicache's SGLang "
                                               r"shim does not provide .* install sglang"):
        create_backend("dynamic", config)
    sys.modules.pop("needs_more_sglang", None)


def test_base_v1_none_is_never_returned(sglang_hidden: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """interface_v1=1 on a class whose v1 methods are SGLang's base's: lists, logged once."""
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=1, head_dim=4)
    backend = create_backend("dynamic", dynamic_config(BASE_RELIANT, tmp_path), mem_pool_host=pool)
    idx = pool.alloc(8)
    assert idx is not None
    with caplog.at_level(logging.ERROR):
        assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
        assert backend.batch_get_v1(["a", "b"], idx) == [True, True]
    assert sum("generic get/set path" in r.getMessage() for r in caplog.records) == 1
    assert backend.capabilities.zero_copy_v1 is False, "capabilities follow the fallback"


# ====================================================================== the real sglang wins
def test_real_sglang_always_wins(real_sglang: None, tmp_path: Path) -> None:
    assert sglang_shim.real_sglang_available()
    assert sglang_shim.install() is False, "never installed when sglang is importable"
    backend = create_backend("dynamic", dynamic_config(BASE_RELIANT, tmp_path))
    hs = sys.modules["sglang.srt.mem_cache.hicache_storage"]
    assert not sglang_shim.is_shim_module(hs)
    assert isinstance(backend, DuckTypedBackend) and isinstance(backend.inner, hs.HiCacheStorage)
    assert not issubclass(hs.HiCacheStorage, HiCacheStorage), "SGLang's own base, not hicache's"
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=2, head_dim=4)
    backend.register_mem_pool_host(pool)
    idx = pool.alloc(8)
    assert idx is not None
    assert backend.batch_set_v1(["p0", "p1"], idx) == [True, True], "the real base's None is caught"
    assert backend.batch_get_v1(["p0", "p9"], idx) == [True, False]


def test_real_sglang_wins_over_an_installed_shim(real_sglang: None) -> None:
    """Even with the shim's finder in place, the real sglang is the one imported."""
    saved = _forget(["sglang"])
    sglang_shim._finder = sglang_shim.SGLangShimFinder()  # as if installed before sglang appeared
    sys.meta_path.append(sglang_shim._finder)
    try:
        hs = importlib.import_module("sglang.srt.mem_cache.hicache_storage")
        assert not sglang_shim.is_shim_module(hs)
        assert not issubclass(hs.HiCacheStorage, HiCacheStorage)
    finally:
        sglang_shim.uninstall()
        _forget(["sglang"])
        sys.modules.update(saved)


# ====================================================================== the conformance kit, under the shim
class _ShimConformance(StorageConformanceTests):
    style: Style

    @pytest.fixture(autouse=True)
    def _hidden(self, sglang_hidden: None) -> None:
        return None

    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            config.extra_config = {**(config.extra_config or {}), **self.style.extra(tmp_path)}
            return create_backend("dynamic", config)

        return _open


class TestFileStyleUnderTheShim(_ShimConformance):
    style = FILE


class TestBaseReliantStyleUnderTheShim(_ShimConformance):
    style = BASE_RELIANT


# ====================================================================== the admin API sequence
KEY = "sglang-compat-admin-key"


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sglang_attach_detach_sequence(tmp_path: Path) -> None:
    """SGLang's runtime attach/detach sequence (its admin API's status codes and GET fields, as
    REFERENCE §5 states them), step by step, against a hicache node.

    The ``file`` backend takes its directory from SGLang's environment variable; the extra
    config holds only SGLang's prefetch knobs (one of them, ``hicache_storage_pass_prefix_keys``,
    unknown to hicache); status codes and the GET fields are what SGLang's check looks at.
    """
    env = {**child_env(), "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": str(tmp_path / "l3")}
    extra = {"hicache_storage_pass_prefix_keys": True, "prefetch_threshold": 256,
             "prefetch_timeout_base": 3, "prefetch_timeout_per_ki_token": 0.01}

    def attach(url: str, backend: str, prefetch: str = "timeout", write: str = "write_through",
               headers: dict[str, str] | None = None) -> httpx.Response:
        body = {"hicache_storage_backend": backend, "hicache_storage_backend_extra_config_json": json.dumps(extra),
                "hicache_storage_prefetch_policy": prefetch, "hicache_write_policy": write}
        return httpx.put(url + "/hicache/storage-backend", json=body, headers=headers or {}, timeout=60)

    flags = ["--page-size", "64", "--device-capacity-tokens", "4096"]
    with NodeProcess(flags, log_path=tmp_path / "keyless.log", env=env) as keyless:
        assert httpx.get(keyless.url + "/hicache/storage-backend").status_code == 400
        assert attach(keyless.url, "file").status_code == 400
        assert httpx.delete(keyless.url + "/hicache/storage-backend").status_code == 400
    with NodeProcess([*flags, "--admin-api-key", KEY], log_path=tmp_path / "n.log", env=env) as node:
        url = node.url + "/hicache/storage-backend"
        unauth = httpx.get(url)
        assert unauth.status_code == 401 and unauth.json() == {"error": "Unauthorized"}
        assert httpx.get(url, headers=_auth()).json()["hicache_storage_backend"] is None
        assert attach(node.url, "file").status_code == 401
        first = attach(node.url, "file", "timeout", "write_back", _auth())
        assert first.status_code == 200, first.text
        view = httpx.get(url, headers=_auth()).json()
        assert view["hicache_storage_backend"] == "file"
        assert view["hicache_storage_backend_extra_config"] == json.dumps(extra)
        assert (view["hicache_storage_prefetch_policy"], view["hicache_write_policy"]) == ("timeout", "write_back")
        again = attach(node.url, "file", "wait_complete", "write_through_selective", _auth())
        assert again.status_code == 200, "same backend again: SGLang updates the policies"
        view = httpx.get(url, headers=_auth()).json()
        assert (view["hicache_storage_prefetch_policy"], view["hicache_write_policy"]) == (
            "wait_complete", "write_through_selective")
        assert attach(node.url, "mooncake", headers=_auth()).status_code != 200, "another backend: detach first"
        for _ in range(2):  # detach, then detach again (idempotent)
            assert httpx.delete(url, headers=_auth(), timeout=60).status_code == 200
            assert httpx.get(url, headers=_auth()).json()["hicache_storage_backend"] is None
        bad = httpx.put(url, json={"hicache_storage_backend": "dynamic",
                                   "hicache_storage_backend_extra_config_json": json.dumps({"backend_name": "x"})},
                        headers=_auth(), timeout=60)
        assert bad.status_code == 400 and "module_path" in bad.text
        assert attach(node.url, "file", headers=_auth()).status_code == 200
        assert httpx.get(url, headers=_auth()).json()["hicache_storage_backend"] == "file"
        assert httpx.delete(url, headers=_auth(), timeout=60).status_code == 200
    assert (tmp_path / "l3").is_dir(), "the file backend used SGLang's directory variable"


def test_bridge_class_without_sglang_is_a_hicache_backend(sglang_hidden: None, tmp_path: Path) -> None:
    """Without sglang, ``HiCacheBridge`` builds on hicache's own ABC (nothing imports sglang) and
    loads in hicache's ``dynamic`` like any backend class."""
    from hicache_core.compat.sglang_bridge import bridge_class

    cls = bridge_class()
    assert issubclass(cls, HiCacheStorage) and not any(_is_sglang(n) for n in sys.modules)
    config = HiCacheStorageConfig(model_name="m", extra_config={
        "backend_name": "hicache", "module_path": "hicache_core.compat.sglang_bridge", "class_name": "HiCacheBridge",
        "hicache_backend": "file", "path": str(tmp_path / "l3")})
    pool = HostKVPool(size=32, page_size=4, layer_num=1, head_num=1, head_dim=4)
    backend = create_backend("dynamic", config, mem_pool_host=pool)
    assert type(backend) is cls and not sglang_shim.is_installed()
    idx = pool.alloc(4)
    assert idx is not None and backend.batch_set_v1(["k0"], idx) == [True]
    assert backend.batch_get_v1(["k0"], idx) == [True]
