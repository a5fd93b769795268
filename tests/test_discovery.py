"""Entry-point discovery: both registration forms, safety of the listing, allowlist, conflicts.

The installed distributions (hicache-file, hicache-example-backend) are used where they can
show a behaviour; edge cases use real ``.dist-info`` folders written to a temp directory and
read back with ``importlib.metadata`` (so entry points carry real distribution metadata), and
real plugin modules on a temporary ``sys.path`` entry.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import uuid
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from hicache_core import (
    BackendLoadError,
    BackendNotFoundError,
    BackendRegistry,
    BackendSpec,
    Capabilities,
    HiCacheStorageConfig,
    create_backend,
)
from hicache_core.plugins.registry import ENTRY_POINT_GROUP, BackendInfo

GROUP = ENTRY_POINT_GROUP


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """Write a module on a temporary sys.path entry; returns its (unique) import name."""
    root = tmp_path / "mods"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def _write(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (root / f"{name}.py").write_text(textwrap.dedent(source).replace("__SELF__", name))
        written.append(name)
        return name

    yield _write  # type: ignore[misc]
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def dists(tmp_path: Path) -> Callable[..., list[EntryPoint]]:
    """Create a real distribution (a .dist-info folder) and return its hicache entry points."""
    site = tmp_path / "site"
    site.mkdir()

    def _dist(name: str, version: str, entry_points: dict[str, str]) -> list[EntryPoint]:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
        dist = importlib.metadata.PathDistribution(info)
        return list(dist.entry_points.select(group=GROUP))

    return _dist


STORE_SOURCE = """
import torch
from hicache_core import Capabilities, HiCacheStorage

class Store(HiCacheStorage):
    capabilities = Capabilities(delete=True)
    def __init__(self, config=None):
        super().__init__(config)
        self.pages = {}
    def get(self, key, target_location=None, target_sizes=None):
        return self.pages.get(key)
    def set(self, key, value=None, target_location=None, target_sizes=None):
        self.pages[key] = value
        return True
    def exists(self, key):
        return key in self.pages
"""


def rows(registry: BackendRegistry) -> dict[str, BackendInfo]:
    return {r.name: r for r in registry.describe()}


# ---------------------------------------------------------------------- installed distributions
def test_installed_plugin_form_and_class_form_are_both_found() -> None:
    listed = rows(BackendRegistry(environ={}))
    file_row, example_row = listed["file"], listed["example"]
    assert (file_row.status, file_row.distribution, file_row.source) == ("available", "hicache-file", "plugin")
    assert file_row.version == importlib.metadata.version("hicache-file")
    assert "zero_copy_v1" in file_row.capabilities and file_row.config_options, "plugin form carries metadata"
    assert (example_row.status, example_row.distribution, example_row.source) == (
        "available", "hicache-example-backend", "class",
    )
    assert "persistent" in example_row.capabilities  # read from the class itself


def test_installed_backends_are_created_by_the_one_factory(tmp_path: Path) -> None:
    registry = BackendRegistry(environ={})
    file_backend = create_backend("file", HiCacheStorageConfig(extra_config={"path": str(tmp_path / "f")}), registry=registry)
    example = create_backend("example", HiCacheStorageConfig(extra_config={"db_path": str(tmp_path / "e.db")}), registry=registry)
    try:
        from hicache_file.store import FileStore

        assert isinstance(file_backend, FileStore) and type(example).__name__ == "ExampleStore"
    finally:
        file_backend.close()
        example.close()


# ---------------------------------------------------------------------- both forms, from scratch
def test_class_form_entry_point(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    mod = modules("classform", STORE_SOURCE)
    eps = dists("acme-store", "2.3.4", {"acme": f"{mod}:Store"})
    registry = BackendRegistry(entry_points_override=eps, environ={})
    row = rows(registry)["acme"]
    assert (row.status, row.distribution, row.version, row.source) == ("available", "acme-store", "2.3.4", "class")
    assert row.capabilities == ["delete", "mla", "sidecar_pools"]
    backend = create_backend("acme", HiCacheStorageConfig(), registry=registry)
    assert type(backend).__name__ == "Store"


def test_plugin_module_form_with_metadata(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("pstore", STORE_SOURCE)
    plugin = modules("pplugin", f"""
        from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
        from hicache_core import Capabilities

        @hookimpl
        def hicache_backends():
            return [
                BackendSpec(name="alpha", target="{store}:Store", install_hint="pip install alpha",
                            capabilities=Capabilities(clear=True),
                            config_options=(ConfigOption("size", 7, "how big"),)),
                BackendSpec(name="beta", target="{store}:Store"),
            ]
    """)
    eps = dists("alpha-plugins", "1.0", {"alpha": plugin})
    registry = BackendRegistry(entry_points_override=eps, environ={})
    listed = rows(registry)
    assert listed["alpha"].status == listed["beta"].status == "available"
    assert listed["alpha"].capabilities == ["clear", "mla", "sidecar_pools"]
    assert listed["alpha"].config_options[0]["name"] == "size"
    assert store not in sys.modules, "the listing imported the storage module of a plugin-form backend"
    backend = create_backend("alpha", HiCacheStorageConfig(), registry=registry)
    assert backend.config.extra()["size"] == 7, "declared defaults fill the extra config"


def test_listing_never_imports_the_heavy_module(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    heavy = modules("heavysdk", "raise RuntimeError('the heavy SDK was imported during listing')\n")
    store = modules("heavystore", f"import {heavy}\n" + STORE_SOURCE)
    plugin = modules("heavyplugin", f"""
        from hicache_core.plugins import BackendSpec, hookimpl

        @hookimpl
        def hicache_backends():
            return [BackendSpec(name="heavy", target="{store}:Store", requires=("{heavy}",))]
    """)
    registry = BackendRegistry(entry_points_override=dists("heavy-dist", "1.0", {"heavy": plugin}), environ={})
    row = rows(registry)["heavy"]
    assert row.status == "available"  # found with find_spec, never run
    assert heavy not in sys.modules and store not in sys.modules
    with pytest.raises(BackendLoadError, match="the heavy SDK was imported"):
        create_backend("heavy", HiCacheStorageConfig(), registry=registry)  # only creation imports it


def test_missing_requirement_and_probe_make_a_backend_unavailable(
    modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]
) -> None:
    store = modules("reqstore", STORE_SOURCE)
    plugin = modules("reqplugin", f"""
        from hicache_core.plugins import BackendSpec, hookimpl

        def no_device():
            return "no RDMA device found"

        def crashing_probe():
            raise OSError("probe blew up")

        @hookimpl
        def hicache_backends():
            return [
                BackendSpec(name="needs-sdk", target="{store}:Store", requires=("no_such_sdk_abc",),
                            install_hint="pip install needs-sdk[full]"),
                BackendSpec(name="probed", target="{store}:Store", probe=no_device),
                BackendSpec(name="crashy", target="{store}:Store", probe=crashing_probe),
            ]
    """)
    registry = BackendRegistry(entry_points_override=dists("req-dist", "1.0", {"needs-sdk": plugin}), environ={})
    listed = rows(registry)
    assert listed["needs-sdk"].status == "unavailable"
    assert "no_such_sdk_abc" in listed["needs-sdk"].reason and "pip install needs-sdk[full]" in listed["needs-sdk"].reason
    assert (listed["probed"].status, listed["probed"].reason) == ("unavailable", "no RDMA device found")
    assert "probe blew up" in listed["crashy"].reason
    with pytest.raises(BackendLoadError, match="no RDMA device found"):
        registry.load_class("probed")


def test_broken_plugin_is_listed_with_its_error_and_others_still_work(
    modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]
) -> None:
    good = modules("goodstore", STORE_SOURCE)
    broken = modules("brokenplugin", "raise ImportError('libfoo.so: cannot open shared object file')\n")
    badhook = modules("badhook", """
        from hicache_core.plugins import hookimpl

        @hookimpl
        def hicache_backends():
            return ["not a spec"]
    """)
    onespec = modules("onespec", """
        from hicache_core.plugins import BackendSpec, hookimpl

        @hookimpl
        def hicache_backends():
            return BackendSpec(name="onespec", target="x.y:Z")
    """)
    eps = (
        dists("broken-dist", "0.1", {"broken": broken})
        + dists("badhook-dist", "0.1", {"badhook": badhook})
        + dists("onespec-dist", "0.1", {"onespec": onespec})
        + dists("good-dist", "1.0", {"good": f"{good}:Store", "missing-class": f"{good}:Nope"})
    )
    registry = BackendRegistry(entry_points_override=eps, environ={})
    listed = rows(registry)
    assert listed["good"].status == "available"
    assert listed["broken"].status == "unavailable" and "libfoo.so" in listed["broken"].reason
    assert listed["broken"].distribution == "broken-dist"
    assert listed["badhook"].status == "unavailable" and "BackendSpec" in listed["badhook"].reason
    assert listed["onespec"].status == "unavailable" and "return a list" in listed["onespec"].reason
    assert listed["missing-class"].status == "unavailable" and "Nope" in listed["missing-class"].reason
    with pytest.raises(BackendLoadError, match=r"libfoo\.so"):
        registry.spec("broken")
    assert "good" in registry.names()


def test_invalid_entry_point_value_is_reported(dists: Callable[..., list[EntryPoint]]) -> None:
    eps = dists("odd-dist", "1.0", {"odd": "pkg.mod:Cls-Name"})
    row = rows(BackendRegistry(entry_points_override=eps, environ={}))["odd"]
    assert row.status == "unavailable" and "package.module:ClassName" in row.reason


# ---------------------------------------------------------------------- allowlist
def test_allowlist_limits_what_loads(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("allowstore", STORE_SOURCE)
    eps = dists("two-dist", "1.0", {"one": f"{store}:Store", "two": f"{store}:Store"})
    registry = BackendRegistry(entry_points_override=eps, environ={"HICACHE_PLUGINS": "one, other"})
    listed = rows(registry)
    assert listed["one"].status == "available"
    assert listed["two"].status == "unavailable"
    assert "HICACHE_PLUGINS" in listed["two"].reason and "one, other" in listed["two"].reason
    with pytest.raises(BackendLoadError, match="HICACHE_PLUGINS"):
        registry.load_class("two")


def test_allowlist_set_but_empty_loads_none(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("emptystore", STORE_SOURCE)
    eps = dists("three-dist", "1.0", {"one": f"{store}:Store", "two": f"{store}:Store"})
    registry = BackendRegistry(entry_points_override=eps, environ={"HICACHE_PLUGINS": ""})
    listed = rows(registry)
    assert listed["one"].status == listed["two"].status == "unavailable"
    assert registry.names() == ["dynamic"]  # dynamic has its own allowlist


def test_allowlist_unset_loads_all(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("unsetstore", STORE_SOURCE)
    eps = dists("four-dist", "1.0", {"one": f"{store}:Store", "two": f"{store}:Store"})
    assert BackendRegistry(entry_points_override=eps, environ={}).names() == ["one", "two", "dynamic"]


# ---------------------------------------------------------------------- conflicts and names
@pytest.mark.parametrize("same_target", [True, False], ids=["same_target", "other_target"])
def test_two_distributions_claiming_one_name_is_an_error_naming_both(
    modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]], same_target: bool
) -> None:
    store = modules("dupstore", STORE_SOURCE)
    other = store if same_target else modules("dupother", STORE_SOURCE)
    eps = dists("first-dist", "1.0", {"dup": f"{store}:Store"}) + dists("second-dist", "2.0", {"dup": f"{other}:Store"})
    registry = BackendRegistry(entry_points_override=eps, environ={})
    row = rows(registry)["dup"]
    assert row.status == "unavailable"
    assert "first-dist" in row.reason and "second-dist" in row.reason
    with pytest.raises(BackendLoadError, match=r"first-dist.*second-dist"):
        create_backend("dup", HiCacheStorageConfig(), registry=registry)


def test_the_name_dynamic_is_reserved(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("dynstore", STORE_SOURCE)
    registry = BackendRegistry(entry_points_override=[], environ={})
    with pytest.raises(ValueError, match="reserved"):
        registry.register(BackendSpec(name="dynamic", target=f"{store}:Store"), distribution="x")


def test_known_backend_not_installed_shows_install_hint() -> None:
    registry = BackendRegistry(entry_points_override=[], environ={})
    listed = rows(registry)
    for name in ("file", "mooncake", "nixl", "hf3fs", "aibrix"):
        assert listed[name].status == "not installed"
        assert listed[name].install_hint == f"pip install hicache-{name}"
    with pytest.raises(BackendNotFoundError, match="pip install hicache-mooncake"):
        create_backend("mooncake", HiCacheStorageConfig(), registry=registry)


def test_unknown_backend_error_says_what_to_do() -> None:
    registry = BackendRegistry(entry_points_override=[], environ={})
    with pytest.raises(BackendNotFoundError, match=r"hicache\.backends.*dynamic"):
        registry.spec("nosuchstore")


def test_in_process_registration(modules: Callable[[str, str], str]) -> None:
    store = modules("inproc", STORE_SOURCE)
    registry = BackendRegistry(entry_points_override=[], environ={})
    registry.register(BackendSpec(name="embedded", target=f"{store}:Store", capabilities=Capabilities(clear=True)))
    row = rows(registry)["embedded"]
    assert (row.status, row.distribution) == ("available", "<in-process>")
    assert create_backend("embedded", HiCacheStorageConfig(), registry=registry).exists("k") is False


def test_same_entry_point_seen_twice_is_not_a_conflict(modules: Callable[[str, str], str], dists: Callable[..., list[EntryPoint]]) -> None:
    store = modules("twicestore", STORE_SOURCE)
    eps = dists("twice-dist", "1.0", {"twice": f"{store}:Store"})
    registry = BackendRegistry(entry_points_override=eps + eps, environ={})
    assert rows(registry)["twice"].status == "available"
