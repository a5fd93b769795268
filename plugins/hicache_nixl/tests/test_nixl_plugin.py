"""Choosing a NIXL plugin, configuration errors, and what ``hicache backends`` says."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)
from hicache_nixl import plugin as nixl_plugin
from hicache_nixl.file_store import NixlFileStore
from hicache_nixl.object_store import NixlObjectStore
from hicache_nixl.runtime import library_load_error
from hicache_nixl.settings import NixlSettings
from nixl_helpers import S3Server, open_nixl

from hicache_core.plugins.registry import BackendRegistry
from hicache_core.spec.errors import BackendConfigError, BackendLoadError


def _gds_loads() -> bool:
    return library_load_error("GDS") == ""


def test_auto_picks_posix_and_says_why_the_others_were_skipped(tmp_path: Path) -> None:
    store = open_nixl({"storage_dir": str(tmp_path)})
    stats = store.get_stats()
    assert isinstance(store, NixlFileStore)
    assert stats["plugin"] == "POSIX" and stats["reason"].startswith("auto:")
    assert set(stats["skipped"]) == {"3FS", "GDS_MT", "GDS", "OBJ"}
    assert "HF3FS" in stats["skipped"]["3FS"]  # the stock wheel has no 3FS plugin
    assert stats["skipped"]["GDS"].startswith("not tried: POSIX comes first in auto order")
    if not _gds_loads():
        assert "libcudart" in stats["skipped"]["GDS"]  # and why it could not run anyway
    store.close()


def test_explicit_gds_without_cuda_explains_the_missing_library(tmp_path: Path) -> None:
    if _gds_loads():
        pytest.skip("the GDS plugin loads on this machine (CUDA and cuFile present)")
    with pytest.raises(BackendLoadError) as info:
        open_nixl({"plugin": "GDS", "storage_dir": str(tmp_path)})
    message = str(info.value)
    assert "GDS cannot be used here" in message
    assert "cannot open shared object file" in message  # the loader's own words
    assert "CUDA and cuFile" in message


def test_obj_without_a_bucket_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HICACHE_NIXL_BUCKET", "AWS_DEFAULT_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BackendLoadError, match="no bucket configured"):
        open_nixl({"plugin": "OBJ"})


def test_plugin_obj_gives_the_object_flavour(s3_server: S3Server, bucket: str) -> None:
    # Through the same NixlStore entry point (auto reaches OBJ only when no file plugin
    # creates, which never happens with the stock wheel, whose POSIX plugin always does).
    store = open_nixl(s3_server.obj_config(bucket))
    assert isinstance(store, NixlObjectStore)
    assert store.get_stats()["reason"] == "configured (plugin=OBJ)"
    store.close()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"plugin": "FOO"}, "plugin"),
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"o_direct": "maybe"}, "o_direct"),
        ({"posix_engine": "spdk"}, "posix_engine"),
        ({"transfer_timeout_s": 0}, "transfer_timeout_s"),
        ({"endpoint": "127.0.0.1:9000"}, "endpoint"),
        ({"staging_pages": -1}, "staging_pages"),
        ({"backend_params": "x"}, "backend_params"),
    ],
)
def test_bad_config_names_the_key(extra: dict[str, object], field: str) -> None:
    with pytest.raises(BackendConfigError, match=field):
        NixlSettings.resolve(extra, environ={})


def test_settings_come_from_extra_then_env_then_defaults() -> None:
    env = {"HICACHE_NIXL_STORAGE_DIR": "/from/env", "AWS_DEFAULT_BUCKET": "envbucket",
           "HICACHE_NIXL_MAX_BYTES": "2GiB"}
    s = NixlSettings.resolve({"storage_dir": "/from/extra"}, environ=env)
    assert s.storage_dir == "/from/extra" and s.sources["storage_dir"] == "extra_config"
    assert s.bucket == "envbucket" and s.sources["bucket"] == "AWS_DEFAULT_BUCKET"
    assert s.max_bytes == 2 << 30
    assert s.plugin == "auto" and s.sources["plugin"] == "default"
    assert NixlSettings.resolve({"plugin": "posix"}, environ={}).plugin == "POSIX"


def test_probe_explains_a_chosen_plugin_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HICACHE_NIXL_PLUGIN", raising=False)
    assert nixl_plugin.probe() is None
    monkeypatch.setenv("HICACHE_NIXL_PLUGIN", "3FS")
    assert "no libplugin_HF3FS.so" in (nixl_plugin.probe() or "")
    monkeypatch.setenv("HICACHE_NIXL_PLUGIN", "bogus")
    assert "not one of" in (nixl_plugin.probe() or "")
    if not _gds_loads():
        monkeypatch.setenv("HICACHE_NIXL_PLUGIN", "GDS")
        assert "needs CUDA and cuFile" in (nixl_plugin.probe() or "")


def test_hicache_backends_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HICACHE_NIXL_PLUGIN", "3FS")
    rows = {r.name: r for r in BackendRegistry().describe()}
    row = rows["nixl"]
    assert row.status == "unavailable" and "HF3FS" in row.reason
    assert {o["name"] for o in row.config_options} >= {"plugin", "storage_dir", "bucket", "max_bytes"}
    monkeypatch.setenv("HICACHE_NIXL_PLUGIN", "auto")
    assert {r.name: r for r in BackendRegistry().describe()}["nixl"].status == "available"


def test_listing_backends_does_not_import_nixl() -> None:
    import subprocess
    import sys

    code = ("import sys; from hicache_core.plugins.registry import BackendRegistry; "
            "BackendRegistry().describe(); print('nixl' in sys.modules, 'nixl_cu12' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
