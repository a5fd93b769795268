"""The usrbio client's ring logic against an emulation of the usrbio API.

A fake, and only because the real thing cannot run on these machines: 3FS's ``hf3fs_fuse.io``
needs a 3FS mount and its C++ library. The emulation keeps the API facts the client relies on
(shared-memory iovec slices, rings for reads *or* writes, ``prepare``/``submit``/``wait``,
completions in any order carrying ``userdata``, results as byte counts or ``-errno``, ``wait``
returning a partial list or raising ``OSError`` on timeout) and does the I/O for real with
``os.pread``/``os.pwrite`` on the registered file. The real client is tested in
test_hf3fs_usrbio.py where 3FS is mounted.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hicache_hf3fs.usrbio_client import UsrbioClient


@dataclass
class _Slice:
    buf: memoryview
    start: int
    stop: int


class _Iovec:
    def __init__(self, shm: Any) -> None:
        self.buf = shm.buf

    def __getitem__(self, s: slice) -> _Slice:
        return _Slice(self.buf, s.start, s.stop)


class _Ring:
    def __init__(self, emu: UsrbioEmulation, entries: int, for_read: bool) -> None:
        self.emu, self.entries, self.for_read = emu, entries, for_read
        self.queue: list[tuple[_Slice, int, int, Any]] = []

    def prepare(self, iov: _Slice, read: bool, fd: int, off: int, userdata: Any = None) -> _Ring:
        if read != self.for_read or len(self.queue) >= self.entries:
            raise OSError(errno.EINVAL, "bad prepare")
        if fd not in self.emu.registered:
            raise OSError(errno.EBADF, "fd not registered")
        self.queue.append((iov, fd, off, userdata))
        return self

    def submit(self) -> _Ring:
        return self

    def wait(self, *, max_results: int = 0, min_results: int = 0, timeout: Any = None) -> list[Any]:
        n = max(0, len(self.queue) - self.emu.stall)
        self.emu.stall = 0
        done, self.queue = self.queue[:n], self.queue[n:]
        if not done:
            raise OSError(errno.ETIMEDOUT, "timed out")
        out = []
        for iov, fd, off, userdata in done:
            size = iov.stop - iov.start
            if off in self.emu.fail_offsets:
                result = -errno.EIO
            elif self.for_read:
                data = os.pread(fd, size, off)
                iov.buf[iov.start : iov.start + len(data)] = data
                result = len(data)
            else:
                result = os.pwrite(fd, bytes(iov.buf[iov.start : iov.stop]), off)
            out.append(SimpleNamespace(result=result, userdata=userdata))
        return out[::-1]  # completion order is not submission order


class UsrbioEmulation:
    """Stands in for the ``hf3fs_fuse.io`` module."""

    def __init__(self) -> None:
        self.registered: set[int] = set()
        self.deregistered: list[int] = []
        self.stall = 0  # how many I/Os the next wait leaves unfinished (a timeout)
        self.fail_offsets: set[int] = set()
        self.rings: list[_Ring] = []

    def register_fd(self, fd: int, flags: int = 0) -> None:
        self.registered.add(fd)

    def deregister_fd(self, fd: int) -> None:
        self.registered.discard(fd)
        self.deregistered.append(fd)

    def make_iovec(self, shm: Any, mount_point: str, block_size: int = 0, numa: int = -1) -> _Iovec:
        return _Iovec(shm)

    def make_ioring(self, mount_point: str, entries: int, for_read: bool = True, io_depth: int = 0,
                    priority: Any = None, timeout: Any = None, numa: int = -1, flags: int = 0) -> _Ring:
        ring = _Ring(self, entries, for_read)
        self.rings.append(ring)
        return ring


PAGE = 4096


def _pages(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (PAGE,), dtype=torch.uint8, generator=g) for _ in range(n)]


def _split(t: torch.Tensor) -> list[memoryview]:
    # Two pieces per page, as a K/V page of the host pool.
    return [memoryview(t[: PAGE // 2].numpy()), memoryview(t[PAGE // 2 :].numpy())]


@pytest.fixture
def emu_client(tmp_path: Path) -> Any:
    emu = UsrbioEmulation()
    client = UsrbioClient(str(tmp_path / "kv.0.bin"), 64 * PAGE, PAGE, "/hf3fs", entries=4, numjobs=2, io_module=emu)  # type: ignore[arg-type]
    yield emu, client
    client.close()


def test_batches_larger_than_a_ring_round_trip_in_submission_order(emu_client: Any) -> None:
    emu, client = emu_client
    pages = _pages(10, 1)
    offsets = [(9 - i) * 2 * PAGE for i in range(10)]
    assert client.batch_write(offsets, [_split(p) for p in pages]) == [PAGE] * 10
    back = [torch.zeros(PAGE, dtype=torch.uint8) for _ in range(10)]
    assert client.batch_read(offsets, [_split(b) for b in back]) == [PAGE] * 10
    assert all(torch.equal(a, b) for a, b in zip(pages, back))
    assert client.describe()["on_3fs"] is True and len(emu.rings) == 4  # 2 jobs x (read, write)


def test_errors_are_per_item_and_leave_targets_untouched(emu_client: Any) -> None:
    emu, client = emu_client
    pages = _pages(3, 2)
    assert client.batch_write([0, PAGE, 2 * PAGE], [_split(p) for p in pages]) == [PAGE] * 3
    emu.fail_offsets = {PAGE}
    back = [torch.full((PAGE,), 7, dtype=torch.uint8) for _ in range(4)]
    got = client.batch_read([0, PAGE, 2 * PAGE, 64 * PAGE], [_split(b) for b in back])
    assert got == [PAGE, -errno.EIO, PAGE, -errno.EINVAL]
    assert torch.equal(back[0], pages[0]) and torch.equal(back[2], pages[2])
    assert bool((back[1] == 7).all()) and bool((back[3] == 7).all())


def test_timed_out_ios_are_drained_before_the_ring_is_reused(tmp_path: Path) -> None:
    emu = UsrbioEmulation()
    client = UsrbioClient(str(tmp_path / "kv.0.bin"), 16 * PAGE, PAGE, "/hf3fs", entries=4, numjobs=1, io_module=emu)  # type: ignore[arg-type]
    try:
        pages = _pages(4, 3)
        emu.stall = 2  # the wait returns 2 of 4: the other 2 time out
        got = client.batch_write([0, PAGE, 2 * PAGE, 3 * PAGE], [_split(p) for p in pages])
        assert sorted(got) == [-errno.ETIMEDOUT, -errno.ETIMEDOUT, PAGE, PAGE]
        write_ring = emu.rings[1]
        assert len(write_ring.queue) == 2  # still owned by the daemon
        assert client.batch_write([4 * PAGE], [_split(pages[0])]) == [PAGE]
        assert write_ring.queue == []  # drained first, then reused
    finally:
        client.close()
    assert emu.deregistered and not emu.registered  # deregistered before close


def test_store_keeps_a_timed_out_write_slot_leased(tmp_path: Path) -> None:
    """A write that timed out may still land: its slot must not be handed to another page."""
    from hicache_hf3fs.store import Hf3fsStore

    from hicache_core import HiCacheStorageConfig
    from hicache_core.memory.host_pool import HostKVPool

    pool = HostKVPool(size=8 * 16, page_size=16, layer_num=2, head_num=2, head_dim=8)
    extra = {"file_path_prefix": str(tmp_path / "kv"), "file_size": 8 * pool.page_bytes, "client": "file"}
    backend = Hf3fsStore(HiCacheStorageConfig(model_name="m", extra_config=extra))
    try:
        backend.register_mem_pool_host(pool)
        assert backend.io is not None
        backend.io.close()
        emu = UsrbioEmulation()
        backend.io = UsrbioClient(backend.file_path, 8 * pool.page_bytes, pool.page_bytes, "/hf3fs",
                                  entries=4, numjobs=1, io_module=emu)  # type: ignore[arg-type]
        idx = pool.alloc(2 * pool.page_size)
        assert idx is not None
        emu.stall = 1
        assert sorted(backend.batch_set_v1(["a", "b"], idx)) == [False, True]
        meta = backend.metadata.stats()
        assert meta["ready_pages"] == 1 and meta["writing_pages"] == 1
        assert backend.get_stats()["write_io_errors"] == 1
    finally:
        backend.close()


def test_store_moves_layer_first_pages_through_the_rings(tmp_path: Path) -> None:
    """A layer_first page is 2 x layers pieces; the rings gather and scatter them in the core's
    stored-byte order (K of every layer, then V), the same bytes the tensor path reads."""
    from hicache_hf3fs.store import Hf3fsStore

    from hicache_core import HiCacheStorageConfig
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.testing.pages import fill_random_pages, read_page_bytes, tensor_bytes

    pool = HostKVPool(size=8 * 16, page_size=16, layer_num=3, head_num=2, head_dim=8, layout="layer_first")
    extra = {"file_path_prefix": str(tmp_path / "kv"), "file_size": 8 * pool.page_bytes, "client": "file"}
    backend = Hf3fsStore(HiCacheStorageConfig(model_name="m", is_page_first_layout=False, extra_config=extra))
    try:
        backend.register_mem_pool_host(pool)
        assert backend.io is not None
        backend.io.close()
        backend.io = UsrbioClient(backend.file_path, 8 * pool.page_bytes, pool.page_bytes, "/hf3fs",
                                  entries=4, numjobs=1, io_module=UsrbioEmulation())  # type: ignore[arg-type]
        idx, expected = fill_random_pages(pool, 3, seed=7)
        assert backend.batch_set_v1(["a", "b", "c"], idx) == [True] * 3
        dest = pool.alloc(3 * pool.page_size)
        assert dest is not None
        assert backend.batch_get_v1(["a", "b", "c"], dest) == [True] * 3
        assert read_page_bytes(pool, dest) == expected
        got = backend.batch_get(["a", "b", "c"], [pool.get_dummy_flat_data_page() for _ in range(3)])
        assert [tensor_bytes(t) if t is not None else None for t in got] == expected
    finally:
        backend.close()
