"""GDS and GDS_MT (GPUDirect Storage through cuFile), run on a GPU machine, skipped elsewhere.

They need a CUDA device and NIXL plugins whose libraries load (libcudart, libcufile); the
skip reason quotes the dynamic loader's message when they do not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)
import torch
from hicache_nixl.runtime import library_load_error
from nixl_helpers import assert_round_trip, make_pool, open_nixl

pytestmark = pytest.mark.gpu


def _skip_unless_gds(plugin: str) -> None:
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False)")
    why = library_load_error(plugin)
    if why:
        reasons.append(why)
    if reasons:
        pytest.skip(f"{plugin} needs a GPU with CUDA and cuFile: {'; '.join(reasons)}")


@pytest.mark.parametrize("plugin", ["GDS", "GDS_MT"])
def test_gds_round_trip_from_the_host_pool(tmp_path: Path, plugin: str) -> None:
    _skip_unless_gds(plugin)
    pool = make_pool(pages=32, layer_num=4, head_num=4, head_dim=8)
    store = open_nixl({"plugin": plugin, "storage_dir": str(tmp_path)}, pool)
    assert store.get_stats()["plugin"] == plugin
    assert_round_trip(store, pool, 8, seed=1, prefix="gds")
    store.close()


def test_auto_prefers_gds_mt_only_after_posix(tmp_path: Path) -> None:
    _skip_unless_gds("GDS_MT")
    store = open_nixl({"storage_dir": str(tmp_path)})
    stats = store.get_stats()
    assert stats["plugin"] in ("3FS", "POSIX")  # the auto order puts POSIX before GDS_MT
    assert "GDS_MT" in stats["skipped"]
    store.close()
