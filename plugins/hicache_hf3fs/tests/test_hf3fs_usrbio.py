"""The usrbio client, for real, where 3FS is mounted; skipped elsewhere, saying why.

Set HICACHE_HF3FS_TEST_DIR to a writable directory on the 3FS mount (default: a directory
``hicache-test`` under the first 3FS mount in /proc/mounts).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hicache_hf3fs.mounts import MOUNTS_FILE, hf3fs_mount_of, parse_mounts
from hicache_hf3fs.store import Hf3fsStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.testing import StorageConformanceTests


def _test_dir() -> tuple[str | None, str]:
    """A directory on 3FS to test in, or None and the reason there is none."""
    if importlib.util.find_spec("hf3fs_fuse") is None:
        return None, (
            "hf3fs_fuse (3FS's usrbio Python client) is not installed; it is built from the 3FS source "
            "tree and only works on a node with a 3FS mount"
        )
    wanted = os.environ.get("HICACHE_HF3FS_TEST_DIR")
    if wanted:
        if hf3fs_mount_of(wanted) is None:
            return None, f"HICACHE_HF3FS_TEST_DIR={wanted} is not on a 3FS mount"
        return wanted, ""
    try:
        mounts = parse_mounts(Path(MOUNTS_FILE).read_text())
    except OSError as exc:
        return None, f"cannot read {MOUNTS_FILE}: {exc}"
    for m in mounts:
        if m.is_3fs:
            return os.path.join(m.mount_point, "hicache-test"), ""
    return None, f"no 3FS mount (fstype fuse.3fs / hf3fs) in {MOUNTS_FILE}"


TEST_DIR, WHY_NOT = _test_dir()
pytestmark = pytest.mark.skipif(TEST_DIR is None, reason=f"usrbio needs a 3FS mount: {WHY_NOT}")


@pytest.fixture
def hf3fs_dir() -> Iterator[Path]:
    assert TEST_DIR is not None
    path = Path(TEST_DIR) / uuid.uuid4().hex
    path.mkdir(parents=True)
    yield path
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


def test_usrbio_client_moves_pages_both_ways(hf3fs_dir: Path) -> None:
    from hicache_hf3fs.usrbio_client import UsrbioClient

    mount = hf3fs_mount_of(str(hf3fs_dir))
    assert mount is not None
    page = 64 << 10
    client = UsrbioClient(str(hf3fs_dir / "kv.0.bin"), 64 * page, page, mount.mount_point, entries=4, numjobs=2)
    try:
        pages = [torch.randint(0, 256, (page,), dtype=torch.uint8) for _ in range(10)]
        items = [[memoryview(p.numpy())] for p in pages]
        offsets = [i * 3 * page for i in range(10)]
        assert client.batch_write(offsets, items) == [page] * 10
        back = [torch.zeros(page, dtype=torch.uint8) for _ in range(10)]
        assert client.batch_read(offsets, [[memoryview(b.numpy())] for b in back]) == [page] * 10
        assert all(torch.equal(a, b) for a, b in zip(pages, back))
        assert client.batch_read([64 * page], [[memoryview(back[0].numpy())]])[0] < 0  # past the file
    finally:
        client.close()


def test_auto_mode_picks_usrbio_on_3fs(hf3fs_dir: Path) -> None:
    config = HiCacheStorageConfig(
        model_name="m", extra_config={"file_path_prefix": str(hf3fs_dir / "kv"), "file_size": 64 << 20}
    )
    backend = Hf3fsStore(config)
    try:
        backend.register_mem_pool_host(HostKVPool(size=256, page_size=16, layer_num=2, head_num=2, head_dim=8))
        stats = backend.get_stats()
        assert stats["mode"] == "usrbio on 3FS" and stats["on_3fs"] is True
    finally:
        backend.close()


class TestHf3fsUsrbioConformance(StorageConformanceTests):
    @pytest.fixture
    def storage_config(self, hf3fs_dir: Path) -> HiCacheStorageConfig:
        extra = {"file_path_prefix": str(hf3fs_dir / "kv"), "file_size": 16 << 20, "numjobs": 2, "entries": 8}
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=extra)

    @pytest.fixture
    def open_backend(self):  # type: ignore[no-untyped-def]
        def _open(config: HiCacheStorageConfig) -> Hf3fsStore:
            return Hf3fsStore(config)

        return _open
