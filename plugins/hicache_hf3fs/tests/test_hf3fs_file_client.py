"""The plain-file client on a real pre-sized local file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hicache_hf3fs.file_client import PlainFileClient

PAGE = 8192


def _item(data: bytearray) -> list[memoryview]:
    mv = memoryview(data)
    return [mv[: PAGE // 4], mv[PAGE // 4 :]]  # two pieces, like K and V


@pytest.mark.parametrize("jobs", [1, 3])
def test_round_trip_keeps_item_order_across_jobs(tmp_path: Path, jobs: int) -> None:
    client = PlainFileClient(str(tmp_path / "f.bin"), 32 * PAGE, numjobs=jobs)
    try:
        assert os.path.getsize(tmp_path / "f.bin") == 32 * PAGE
        pages = [bytearray(os.urandom(PAGE)) for _ in range(7)]
        offsets = [(31 - 4 * i) * PAGE for i in range(7)]
        assert client.batch_write(offsets, [_item(p) for p in pages]) == [PAGE] * 7
        back = [bytearray(PAGE) for _ in range(7)]
        assert client.batch_read(offsets, [_item(b) for b in back]) == [PAGE] * 7
        assert back == pages
        with open(tmp_path / "f.bin", "rb") as fh:
            fh.seek(offsets[3])
            assert fh.read(PAGE) == pages[3]
    finally:
        client.close()


def test_bad_items_fail_alone(tmp_path: Path) -> None:
    client = PlainFileClient(str(tmp_path / "f.bin"), 4 * PAGE, numjobs=2)
    try:
        good = bytearray(os.urandom(PAGE))
        got = client.batch_write([0, 4 * PAGE, -PAGE, PAGE], [_item(good)] * 4)
        assert got == [PAGE, -errno.EINVAL, -errno.EINVAL, PAGE]
        with pytest.raises(ValueError, match="offsets"):
            client.batch_read([0], [])
    finally:
        client.close()
    assert client.batch_read([0], [_item(bytearray(PAGE))]) == [-errno.EBADF]
    client.close()  # idempotent


def test_existing_larger_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (8 * PAGE))
    client = PlainFileClient(str(path), 4 * PAGE, numjobs=1)
    client.close()
    assert path.stat().st_size == 8 * PAGE
