"""Backends written for SGLang 0.5.x load and work in hicache unchanged.

The backends under ``tests/sglang_style/`` are written only from SGLang's storage contract (see
that package's docstring); three of them import ``sglang.srt.mem_cache...``, which is not
installed here, so hicache's import shim serves those modules. Each backend is loaded the way
an SGLang user names it (``dynamic`` with ``backend_name``/``module_path``/``class_name``/
``interface_v1``), passes the conformance kit, and serves a real node process attached over
SGLang's HTTP admin API, with a second node reading what the first one stored.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from _node_helpers import child_env

from hicache_core import (
    BackendLoadError,
    BackendRegistry,
    BackendSpec,
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
    HostKVPool,
    LayoutError,
    create_backend,
)
from hicache_core.compat import sglang_shim
from hicache_core.keys import get_hash_str
from hicache_core.memory.host_pool import LAYOUTS
from hicache_core.node.server import NodeProcess
from hicache_core.plugins.adapter import DuckTypedBackend
from hicache_core.replay import HttpTarget, load_trace, replay, sample_trace_path
from hicache_core.testing import StorageConformanceTests

KEY = "sglang-compat-admin-key"


@dataclass(frozen=True)
class Style:
    """One SGLang-style backend: how an SGLang user would name it, and where its store lives."""

    module: str
    class_name: str
    interface_v1: int
    store_key: str  # the extra-config key of its store location
    store_is_file: bool = False

    def extra(self, root: Path) -> dict[str, Any]:
        where = root / ("pages.db" if self.store_is_file else "store")
        return {"backend_name": self.module, "module_path": f"sglang_style.{self.module}",
                "class_name": self.class_name, "interface_v1": self.interface_v1, self.store_key: str(where)}


FILE = Style("file_store", "SGLangStyleFile", 0, "file_path")
ZERO_COPY = Style("zero_copy_store", "ZeroCopyStore", 1, "store_dir")
BASE_RELIANT = Style("base_reliant_store", "BaseReliantStore", 1, "path")  # v1 = the base's None
FLAT_PAGE = Style("flat_page_store", "FlatPageStore", 1, "db_path", store_is_file=True)
STYLES = (FILE, ZERO_COPY, BASE_RELIANT, FLAT_PAGE)


def dynamic_config(style: Style, root: Path, **fields_: Any) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(model_name="org/compat-model", extra_config=style.extra(root), **fields_)


def _forget_style_modules() -> None:
    for name in [n for n in sys.modules if n.startswith("sglang_style.")]:
        del sys.modules[name]


@pytest.fixture
def clean_imports() -> Iterator[None]:
    """No shim, no sglang module and no style backend imported, before and after the test."""
    sglang_shim.uninstall()
    _forget_style_modules()
    yield
    sglang_shim.uninstall()
    _forget_style_modules()
    for name in [n for n in sys.modules if n == "sglang" or n.startswith("sglang.")]:
        del sys.modules[name]


# ====================================================================== the import shim
def test_real_sglang_is_not_installed_here() -> None:
    """The shim tests below assume no sglang; if one is installed they would test the real one."""
    sglang_shim.uninstall()
    assert not sglang_shim.real_sglang_available(), "sglang is installed: the shim is never used"


def test_shim_is_installed_on_demand_and_logged(clean_imports: None, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    assert "sglang" not in sys.modules and not sglang_shim.is_installed()
    with caplog.at_level(logging.INFO, logger="hicache_core.compat.sglang_shim"):
        backend = create_backend("dynamic", dynamic_config(FILE, tmp_path))
    assert sglang_shim.is_installed()
    assert any("SGLang shim" in r.getMessage() and "sglang_style.file_store" in r.getMessage()
               for r in caplog.records), "the shim announces itself at INFO"
    assert sglang_shim.is_shim_module(sys.modules["sglang.srt.mem_cache.hicache_storage"])
    assert sys.meta_path[-1].__class__.__name__ == "SGLangShimFinder", "last, so real modules win"
    assert backend.exists("nothing") is False


def test_shim_modules_are_sglang_names_on_hicache_classes(clean_imports: None) -> None:
    assert sglang_shim.install()
    from sglang.srt.mem_cache import hicache_storage as hs
    from sglang.srt.mem_cache import memory_pool_host as mph

    assert issubclass(hs.HiCacheStorage, HiCacheStorage), "SGLang's base is hicache's ABC underneath"
    assert hs.HiCacheStorageConfig is HiCacheStorageConfig
    assert hs.HiCacheStorageExtraInfo is HiCacheStorageExtraInfo
    assert hs.get_hash_str([1, 2, 3]) == get_hash_str([1, 2, 3])
    assert hs.get_hash_str([4], hs.get_hash_str([1])) == get_hash_str([4], get_hash_str([1]))
    assert hs.STORAGE_BATCH_SIZE == 128
    assert hs.hash_str_to_int64("7" + "f" * 63) == (1 << 63) - 1
    assert hs.hash_str_to_int64("f" * 16 + "0" * 48) == -1
    assert mph.HostKVCache is HostKVPool
    mha = HostKVPool(size=16, page_size=4, layer_num=1, head_num=1, head_dim=4)
    mla = mph.MLATokenToKVPoolHost(size=16, page_size=4, layer_num=1, head_num=1, head_dim=4)
    assert mla.is_mla and isinstance(mla, mph.HostKVCache)
    assert isinstance(mha, mph.MHATokenToKVPoolHost) and not isinstance(mha, mph.MLATokenToKVPoolHost)
    assert isinstance(mla, mph.MLATokenToKVPoolHost) and not isinstance(mla, mph.MHATokenToKVPoolHost)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("sglang.srt.managers")  # only the storage modules are served


def test_shim_base_keeps_sglang_behaviour(clean_imports: None) -> None:
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


def test_uninstall_is_complete(clean_imports: None) -> None:
    assert sglang_shim.install()
    importlib.import_module("sglang.srt.mem_cache.hicache_storage")
    sglang_shim.uninstall()
    assert not sglang_shim.is_installed()
    assert not any(n == "sglang" or n.startswith("sglang.") for n in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("sglang")


def test_shim_can_be_disabled(clean_imports: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sglang_shim.SHIM_ENV, "0")
    with pytest.raises(BackendLoadError, match="ModuleNotFoundError: No module named 'sglang'"):
        create_backend("dynamic", dynamic_config(FILE, tmp_path))
    assert not sglang_shim.is_installed()


def test_sglang_module_the_shim_lacks_is_named(clean_imports: None, tmp_path: Path,
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


STAND_IN_SGLANG = {
    "sglang/__init__.py": "STAND_IN = True\n",
    "sglang/srt/__init__.py": "",
    "sglang/srt/mem_cache/__init__.py": "",
    "sglang/srt/mem_cache/memory_pool_host.py": "class HostKVCache:\n    pass\n",
    "sglang/srt/mem_cache/hicache_storage.py": textwrap.dedent("""
        from abc import ABC, abstractmethod
        from dataclasses import dataclass
        from typing import Optional

        @dataclass
        class HiCacheStorageConfig:
            tp_rank: int
            tp_size: int
            pp_rank: int
            pp_size: int
            is_mla_model: bool
            is_page_first_layout: bool
            model_name: Optional[str]
            extra_config: Optional[dict] = None

        @dataclass
        class HiCacheStorageExtraInfo:
            prefix_keys: Optional[list] = None
            extra_info: Optional[dict] = None

        class HiCacheStorage(ABC):
            def clear(self):
                pass
            def register_mem_pool_host(self, mem_pool_host):
                self.mem_pool_host = mem_pool_host
            def batch_get_v1(self, keys, host_indices, extra_info=None):
                pass
            def batch_set_v1(self, keys, host_indices, extra_info=None):
                pass
            @abstractmethod
            def get(self, key, target_location=None, target_sizes=None): ...
            @abstractmethod
            def batch_get(self, keys, target_locations=None, target_sizes=None): ...
            @abstractmethod
            def set(self, key, value=None, target_location=None, target_sizes=None): ...
            @abstractmethod
            def batch_set(self, keys, values=None, target_locations=None, target_sizes=None): ...
            @abstractmethod
            def exists(self, key): ...
            def batch_exists(self, keys, extra_info=None):
                for i in range(len(keys)):
                    if not self.exists(keys[i]):
                        return i
                return len(keys)
    """),
}


@pytest.fixture
def stand_in_sglang(clean_imports: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for an installed sglang (the real one needs CUDA builds this machine lacks):
    just its storage modules, with SGLang's base-class behaviour, on sys.path."""
    root = tmp_path / "site"
    for rel, text in STAND_IN_SGLANG.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_installed_sglang_always_wins(stand_in_sglang: Path, tmp_path: Path) -> None:
    assert sglang_shim.real_sglang_available()
    assert sglang_shim.install() is False, "never installed when sglang is importable"
    backend = create_backend("dynamic", dynamic_config(BASE_RELIANT, tmp_path))
    assert sys.modules["sglang"].STAND_IN is True
    assert not sglang_shim.is_shim_module(sys.modules["sglang.srt.mem_cache.hicache_storage"])
    assert isinstance(backend, DuckTypedBackend), "a class on the real SGLang base is adapted"
    assert backend.capabilities.clear is False, "the base's do-nothing clear() is not a capability"
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=2, head_dim=4)
    backend.register_mem_pool_host(pool)
    idx = pool.alloc(8)
    assert idx is not None
    assert backend.batch_set_v1(["p0", "p1"], idx) == [True, True], "the real base's None is caught"
    assert backend.batch_get_v1(["p0", "p9"], idx) == [True, False]


def test_installed_sglang_wins_over_an_installed_shim(stand_in_sglang: Path) -> None:
    """Even with the shim's finder in place, a sglang on sys.path is the one imported."""
    sglang_shim._finder = sglang_shim.SGLangShimFinder()  # as if installed before sglang appeared
    sys.meta_path.append(sglang_shim._finder)
    assert sglang_shim.is_installed()
    hs = importlib.import_module("sglang.srt.mem_cache.hicache_storage")
    assert not sglang_shim.is_shim_module(hs) and sys.modules["sglang"].STAND_IN is True
    assert not issubclass(hs.HiCacheStorage, HiCacheStorage)


# ====================================================================== config and host pool
def test_config_positional_in_sglang_field_order() -> None:
    # SGLang's cache controller builds the config in this order.
    cfg = HiCacheStorageConfig(3, 8, 1, 2, False, True, "meta-llama/Llama-3-8B")
    assert (cfg.tp_rank, cfg.tp_size, cfg.pp_rank, cfg.pp_size) == (3, 8, 1, 2)
    assert cfg.is_mla_model is False and cfg.is_page_first_layout is True
    assert cfg.model_name == "meta-llama/Llama-3-8B" and cfg.extra_config is None
    names = [f.name for f in fields(HiCacheStorageConfig)]
    assert names[:10] == ["tp_rank", "tp_size", "pp_rank", "pp_size", "is_mla_model", "is_page_first_layout",
                          "model_name", "enable_storage_metrics", "extra_config", "dp_rank"]
    kw = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, is_mla_model=True,
                              is_page_first_layout=False, model_name="ds", extra_config={"a": 1})
    assert kw.extra() == {"a": 1} and kw.namespace_suffix() == "_ds"
    # fields later SGLang releases read, with SGLang's defaults
    assert (kw.tp_lcm_size, kw.should_split_heads, kw.attn_cp_rank, kw.attn_cp_size) == (None, False, 0, 1)
    info = HiCacheStorageExtraInfo(["h0"], {"x": 1})
    assert info.prefix_keys == ["h0"] and info.extra_info == {"x": 1}


def test_sglang_style_suffix_equals_hicache_suffix(tmp_path: Path) -> None:
    """Keys a SGLang-written backend stores are the keys hicache's own backends store."""
    for mla in (False, True):
        cfg = dynamic_config(FILE, tmp_path, tp_rank=1, tp_size=2, is_mla_model=mla)
        backend = create_backend("dynamic", cfg)
        assert isinstance(backend, DuckTypedBackend)
        assert backend.inner.config_suffix == cfg.namespace_suffix()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mla", [False, True])
def test_host_pool_answers_sglang_names(layout: str, mla: bool) -> None:
    L, H, D, P, size = 3, 2, 8, 4, 32
    pool = HostKVPool(size=size, page_size=P, layer_num=L, head_num=H, head_dim=D, dtype=torch.float16,
                      layout=layout, is_mla=mla)
    it = 2
    heads = 1 if mla else H
    assert (pool.layout, pool.page_size, pool.size, pool.dtype) == (layout, P, size, torch.float16)
    assert (pool.layer_num, pool.head_num, pool.head_dim) == (L, heads, D)
    assert (pool.start_layer, pool.end_layer, str(pool.device)) == (0, L, "cpu")
    assert pool.page_num == size // P
    per_token = L * heads * D * it * (1 if mla else 2)
    assert pool.get_size_per_token() == pool.size_per_token == per_token
    assert pool.get_ksize_per_token() == (per_token if mla else per_token // 2)
    assert pool.kv_buffer.numel() * it == per_token * size
    assert pool.token_stride_size == heads * D * it and pool.layout_dim == heads * D * it * L
    if mla:
        assert pool.kv_lora_rank is not None and pool.qk_rope_head_dim is not None
        assert pool.kv_lora_rank + pool.qk_rope_head_dim == pool.kv_cache_dim == D
    else:
        assert torch.equal(pool.k_buffer, pool.kv_buffer[0]) and torch.equal(pool.v_buffer, pool.kv_buffer[1])
    # get_page_buffer_meta with a tensor of token indices, as SGLang's backends call it
    idx = pool.alloc(2 * P)
    assert idx is not None
    ptrs, sizes = pool.get_page_buffer_meta(idx)
    base = pool.kv_buffer.data_ptr()
    first = int(idx[0])
    if layout in ("page_first", "page_first_direct"):
        piece = L * it * P * heads * D  # SGLang's element size for page layouts
        assert sizes == [piece] * len(ptrs)
        assert ptrs[0] == base + first * L * heads * D * it
        if not mla:
            assert len(ptrs) == 4 and ptrs[1] - ptrs[0] == L * size * H * D * it  # V after K
        else:
            assert len(ptrs) == 2
    else:
        assert len(ptrs) == 2 * L * (1 if mla else 2) and sizes[0] == it * P * heads * D
    if layout != "layer_first":  # SGLang's earlier helper, page layouts only as there
        names, ptrs2, sizes2 = pool.get_buffer_meta(["a", "b"], idx, 3)
        assert (ptrs2, sizes2) == (ptrs, sizes)
        assert names == (["a_k", "b_k"] if mla else ["a_3_k", "a_3_v", "b_3_k", "b_3_v"])
    else:
        with pytest.raises(LayoutError):
            pool.get_buffer_meta(["a", "b"], idx)
    # the flat-page methods take a 0-dim tensor index (host_indices[i * page_size])
    page = torch.arange(pool.page_bytes // it, dtype=torch.float16)
    pool.set_from_flat_data_page(idx[P], page)
    assert torch.equal(pool.get_data_page(idx[P], flat=True), page)
    assert pool.get_dummy_flat_data_page().shape == page.shape


def test_mla_rank_split_must_add_up() -> None:
    pool = HostKVPool(size=16, page_size=4, layer_num=1, head_num=1, head_dim=576, is_mla=True,
                      kv_lora_rank=512, qk_rope_head_dim=64)
    assert (pool.kv_lora_rank, pool.qk_rope_head_dim) == (512, 64)
    with pytest.raises(ValueError, match="must equal head_dim"):
        HostKVPool(size=16, page_size=4, layer_num=1, head_num=1, head_dim=576, is_mla=True,
                   kv_lora_rank=512, qk_rope_head_dim=32)
    with pytest.raises(ValueError, match="pass is_mla=True"):
        HostKVPool(size=16, page_size=4, layer_num=1, head_num=1, head_dim=8, kv_lora_rank=4)


# ====================================================================== each style backend
@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.module)
def test_style_backend_loads_through_dynamic(style: Style, tmp_path: Path) -> None:
    pool = HostKVPool(size=64, page_size=4, layer_num=2, head_num=2, head_dim=4, dtype=torch.bfloat16)
    backend = create_backend("dynamic", dynamic_config(style, tmp_path), mem_pool_host=pool)
    assert isinstance(backend, DuckTypedBackend), "SGLang-shaped classes are served through the adapter"
    assert type(backend.inner).__name__ == style.class_name
    assert backend.inner.mem_pool_host is pool
    idx = pool.alloc(3 * pool.page_size)
    assert idx is not None
    for i, p in enumerate(pool.indices_to_pages(idx)):
        pool.write_page(p, torch.full((pool.page_bytes // 2,), float(i + 1), dtype=torch.bfloat16))
    keys = [get_hash_str([i]) for i in range(3)]
    assert backend.batch_set_v1(keys, idx) == [True] * 3
    assert backend.batch_exists([*keys, "f" * 64]) == 3
    dest = pool.alloc(4 * pool.page_size)
    assert dest is not None
    assert backend.batch_get_v1([keys[0], "f" * 64, keys[2], keys[1]], dest) == [True, False, True, True]
    got = [pool.read_page(p) for p in pool.indices_to_pages(dest)]
    assert [float(got[i][0]) for i in (0, 2, 3)] == [1.0, 3.0, 2.0]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.module)
def test_style_backend_pages_survive_reopen(style: Style, tmp_path: Path) -> None:
    """What the conformance kit cannot see (SGLang backends declare no capabilities): the
    stores are persistent, so a second instance on the same config reads the first one's pages."""
    def open_one() -> tuple[HiCacheStorage, HostKVPool]:
        pool = HostKVPool(size=64, page_size=4, layer_num=2, head_num=2, head_dim=4)
        return create_backend("dynamic", dynamic_config(style, tmp_path), mem_pool_host=pool), pool

    first, pool = open_one()
    idx = pool.alloc(8)
    assert idx is not None
    for i, p in enumerate(pool.indices_to_pages(idx)):
        pool.write_page(p, torch.full((pool.page_bytes // 2,), float(i + 5), dtype=torch.bfloat16))
    keys = [get_hash_str([7]), get_hash_str([8], get_hash_str([7]))]
    assert first.batch_set_v1(keys, idx) == [True, True]
    first.close()
    second, pool2 = open_one()
    assert second.batch_exists(keys) == 2
    dest = pool2.alloc(8)
    assert dest is not None
    assert second.batch_get_v1(keys, dest) == [True, True]
    assert [float(pool2.read_page(p)[0]) for p in pool2.indices_to_pages(dest)] == [5.0, 6.0]
    second.close()


@pytest.mark.parametrize(("style", "native_v1"), [(FLAT_PAGE, True), (BASE_RELIANT, False), (ZERO_COPY, True)],
                         ids=lambda v: getattr(v, "module", str(v)))
def test_sglang_class_as_an_installed_plugin(clean_imports: None, style: Style, native_v1: bool, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The same classes behind a plugin's entry point (no interface_v1 key): the shim serves
    their sglang imports, and their own v1 methods are used when they define them."""
    registry = BackendRegistry(entry_points_override=[], environ={})
    registry.register(BackendSpec(name="sgstyle", target=f"sglang_style.{style.module}:{style.class_name}"))
    extra = {k: v for k, v in style.extra(tmp_path).items() if k not in ("backend_name", "module_path",
                                                                         "class_name", "interface_v1")}
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=2, head_dim=4)
    with caplog.at_level(logging.ERROR):
        backend = create_backend("sgstyle", HiCacheStorageConfig(model_name="m", extra_config=extra),
                                 mem_pool_host=pool, registry=registry)
        assert isinstance(backend, DuckTypedBackend) and backend.capabilities.zero_copy_v1 is native_v1
        idx = pool.alloc(8)
        assert idx is not None
        assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
        assert backend.batch_get_v1(["b", "zz"], idx) == [True, False]
    assert not any("generic get/set path" in r.getMessage() for r in caplog.records), "no None ever met"


def test_base_v1_none_is_never_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """interface_v1=1 on a class whose v1 methods are SGLang's base's: lists, logged once."""
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=1, head_dim=4)
    backend = create_backend("dynamic", dynamic_config(BASE_RELIANT, tmp_path), mem_pool_host=pool)
    assert backend.capabilities.zero_copy_v1 is True  # as declared by interface_v1, until shown otherwise
    idx = pool.alloc(8)
    assert idx is not None
    with caplog.at_level(logging.ERROR):
        assert backend.batch_set_v1(["a", "b"], idx) == [True, True]
        assert backend.batch_get_v1(["a", "b"], idx) == [True, True]
    assert sum("generic get/set path" in r.getMessage() for r in caplog.records) == 1
    assert backend.capabilities.zero_copy_v1 is False, "capabilities follow the fallback"
    assert backend.inner.get_stats()["sets"] == 2, "pages went through the backend's own set()"


def test_zero_copy_style_refuses_layer_first_as_layout_error(tmp_path: Path) -> None:
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=1, head_dim=4, layout="layer_first")
    with pytest.raises(LayoutError, match=r"refused host pool layout 'layer_first'.*page_first"):
        create_backend("dynamic", dynamic_config(ZERO_COPY, tmp_path), mem_pool_host=pool)


def test_zero_copy_style_pointer_form(tmp_path: Path) -> None:
    """Mooncake's single-page methods take a pointer and a size; they still work unchanged."""
    pool = HostKVPool(size=64, page_size=4, layer_num=1, head_num=1, head_dim=4, is_mla=True)
    backend = create_backend("dynamic", dynamic_config(ZERO_COPY, tmp_path, is_mla_model=True),
                             mem_pool_host=pool)
    idx = pool.alloc(8)
    assert idx is not None
    pool.write_page(pool.indices_to_pages(idx)[0], torch.full((pool.page_bytes // 2,), 7.0, dtype=torch.bfloat16))
    (ptr,), (size,) = pool.get_page_buffer_meta(idx[:4])
    assert backend.inner.set("ptrkey", target_location=ptr, target_sizes=size) is True
    (ptr2,), _ = pool.get_page_buffer_meta(idx[4:])
    assert backend.inner.get("ptrkey", target_location=ptr2, target_sizes=size) is True
    assert torch.equal(pool.read_page(pool.indices_to_pages(idx)[1]), pool.read_page(pool.indices_to_pages(idx)[0]))


def test_style_backends_import_nothing_from_hicache() -> None:
    """They must be what a third party writes from SGLang's contract alone."""
    import ast

    for style in STYLES:
        source = (Path(__file__).parent / "sglang_style" / f"{style.module}.py").read_text()
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("hicache") for n in names), (style.module, names)


def test_hicache_check_cli_on_an_sglang_backend(tmp_path: Path) -> None:
    """``hicache check dynamic`` is how an author checks a backend written for SGLang."""
    config = json.dumps(BASE_RELIANT.extra(tmp_path))
    out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "check", "dynamic", "--config", config],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **child_env()})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "dynamic conforms" in out.stdout


# ---------------------------------------------------------------------- the conformance kit
class _DynamicConformance(StorageConformanceTests):
    style: Style

    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            config.extra_config = {**(config.extra_config or {}), **self.style.extra(tmp_path)}
            return create_backend("dynamic", config)

        return _open


class TestFileStyleConformance(_DynamicConformance):
    style = FILE


class TestZeroCopyStyleConformance(_DynamicConformance):
    style = ZERO_COPY


class TestBaseReliantStyleConformance(_DynamicConformance):
    style = BASE_RELIANT


class TestFlatPageStyleConformance(_DynamicConformance):
    style = FLAT_PAGE


# ====================================================================== in a real node
REPLAY_REQUESTS = 120


@pytest.fixture(scope="module")
def trace_slice():  # type: ignore[no-untyped-def]
    return load_trace(sample_trace_path(), REPLAY_REQUESTS)


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _attach(url: str, style: Style, root: Path) -> httpx.Response:
    """Exactly what an SGLang user sends: the extra config as a JSON *string*."""
    body = {"hicache_storage_backend": "dynamic",
            "hicache_storage_backend_extra_config_json": json.dumps(style.extra(root))}
    return httpx.put(url + "/hicache/storage-backend", json=body, headers=_auth(), timeout=60)


# How each backend names what it stores for the node's model ("tiny", or "tiny-mla"), rank 0 of 1.
STORED_NAMES = {FILE.module: "*_tiny_0_1.bin", ZERO_COPY.module: "*_0_[kv]",
                BASE_RELIANT.module: "tiny/*.0of1", FLAT_PAGE.module: "%_tiny-mla"}


def _stored_items(style: Style, root: Path) -> int:
    """Pages (or K/V pieces) the backend stored, found under its own naming scheme."""
    where = Path(style.extra(root)[style.store_key])
    pattern = STORED_NAMES[style.module]
    if style.store_is_file:
        with closing(sqlite3.connect(where)) as db:
            return int(db.execute("SELECT COUNT(*) FROM pages WHERE key LIKE ?", (pattern,)).fetchone()[0])
    return sum(1 for p in where.glob(pattern) if p.is_file())


NODE_CASES = [  # (style, host pool layout, MLA model)
    (FILE, "layer_first", False),
    (ZERO_COPY, "page_first_direct", False),
    (BASE_RELIANT, "page_first", False),
    (FLAT_PAGE, "page_first", True),
]


@pytest.mark.parametrize(("style", "layout", "mla"), NODE_CASES, ids=lambda v: getattr(v, "module", str(v)))
def test_node_serves_style_backend_across_a_restart(style: Style, layout: str, mla: bool, tmp_path: Path,
                                                    trace_slice) -> None:  # type: ignore[no-untyped-def]
    """Node A fills the store; node B (empty L1/L2, same store) gets its hits from L3."""
    flags = ["--admin-api-key", KEY, "--page-size", "64", "--device-capacity-tokens", "8192",
             "--hicache-ratio", "2", "--hicache-mem-layout", layout,
             "--model-preset", "tiny-mla" if mla else "tiny"]
    nodes = [NodeProcess(flags, log_path=tmp_path / f"node{i}.log", env=child_env()) for i in range(2)]
    try:
        for n in nodes:
            n.start()
        summaries = []
        for n in nodes:
            resp = _attach(n.url, style, tmp_path)
            assert resp.status_code == 200, (resp.text, n.log_tail())
            assert set(resp.json()) == {"success", "message"} and resp.json()["success"] is True
            view = httpx.get(n.url + "/hicache/storage-backend", headers=_auth()).json()
            assert view["hicache_storage_backend"] == "dynamic"
            assert json.loads(view["hicache_storage_backend_extra_config_json"])["class_name"] == style.class_name
            target = HttpTarget(n.url)
            try:
                result = replay(target, trace_slice, concurrency=2, progress=False)
            finally:
                target.close()
            summaries.append(result.summary())
            status = httpx.get(n.url + "/hicache/status").json()
            assert status["storage_state"] == "attached", n.log_tail()
            counters = status["ranks"][0]["storage"]["counters"]
            assert counters.get("backup_failed_pages", 0) == 0, counters
            detach = httpx.delete(n.url + "/hicache/storage-backend", headers=_auth(), timeout=60)
            assert detach.status_code == 200 and detach.json()["success"] is True
        first, second = summaries
        for s in summaries:
            assert s["failed_requests"] == 0 and s["verify_errors"] == 0 and s["node_verify_errors"] == 0, s
        assert first["bytes_stored"] > 0 and _stored_items(style, tmp_path) > 0
        assert second["hit_tokens"]["storage"] > first["hit_tokens"]["storage"], (first, second)
        assert second["token_hit_ratio"] > first["token_hit_ratio"]
    finally:
        for n in nodes:
            n.stop()


def test_sglang_attach_detach_sequence(tmp_path: Path) -> None:
    """SGLang's own runtime attach/detach check, step by step, against a hicache node.

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
