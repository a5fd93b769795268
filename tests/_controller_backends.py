"""Real, small backends for the controller tests: a directory of files, and broken variants.

``DirStore`` keeps one file per page under ``extra_config["root"]`` and reads straight into
host-pool pages (``page_memoryviews`` + ``readinto``); writes go to a temporary file renamed
into place, so a page on disk is always whole. ``POISON`` names keys whose reads fail, to
provoke a failure in the middle of a batch. ``BATCHES`` records the size of every v1 call.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hicache_core import (
    BackendRegistry,
    BackendSpec,
    Capabilities,
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
    HostKVPool,
)
from hicache_core.controller import StorageController

#: Keys (full storage keys) whose reads fail with False.
POISON: set[str] = set()
#: (method, number of keys) of every v1 call, in order.
BATCHES: list[tuple[str, int]] = []
_LOCK = threading.Lock()

PAGE_SIZE = 4


class DirStore(HiCacheStorage):
    """One file per page in a directory; a real file backend in ~60 lines."""

    capabilities = Capabilities(zero_copy_v1=True, delete=True, clear=True, persistent=True)
    #: What the status endpoints may show (an allow-list; anything else is shown as ***).
    config_public_fields = ("root", "ctor_delay_s", "full_after", "read_delay_s", "down")

    def __init__(self, config: HiCacheStorageConfig) -> None:
        super().__init__(config)
        extra = config.extra()
        if "root" not in extra:
            raise ValueError("DirStore needs extra_config['root']")
        self.root = Path(extra["root"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.closed = False

    def _path(self, key: str) -> Path:
        return self.root / key

    def close(self) -> None:
        self.closed = True

    # single-key
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        try:
            raw = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        page = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            target_location.view(-1).view(torch.uint8).copy_(page)
            return target_location
        return page

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        self._write(key, [memoryview(value.contiguous().view(-1).view(torch.uint8).numpy())])
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> bool:
        self._path(key).unlink(missing_ok=True)
        return True

    def clear(self) -> None:
        for p in self.root.iterdir():
            p.unlink(missing_ok=True)

    def _write(self, key: str, views: list[memoryview]) -> None:
        tmp = self.root / f".{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            for v in views:
                f.write(v)
        os.replace(tmp, self._path(key))

    # zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        with _LOCK:
            BATCHES.append(("get", len(keys)))
        out: list[bool] = []
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            if key in POISON:
                out.append(False)
                continue
            try:
                with open(self._path(key), "rb") as f:
                    ok = all(f.readinto(v) == len(v) for v in pool.page_memoryviews(page))  # type: ignore[arg-type]
            except FileNotFoundError:
                ok = False
            out.append(ok)
        return out

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        with _LOCK:
            BATCHES.append(("set", len(keys)))
        for key, page in zip(keys, pool.indices_to_pages(host_indices)):
            self._write(key, pool.page_memoryviews(page))
        return [True] * len(keys)


class FailingCtorStore(DirStore):
    """Its constructor raises, as a backend whose server is unreachable would."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        raise RuntimeError("cannot reach the storage server at 127.0.0.1:1")


class PageLayoutStore(DirStore):
    """Needs page-contiguous host memory: refuses a ``layer_first`` pool."""

    capabilities = Capabilities(zero_copy_v1=True, persistent=True, requires_page_layout=True)

    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        mem_pool_host.require_page_layout("pagestore")
        super().register_mem_pool_host(mem_pool_host)


class SlowCtorStore(DirStore):
    """Takes ``extra_config["ctor_delay_s"]`` seconds to start (a slow connection set-up)."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        time.sleep(float(config.extra().get("ctor_delay_s", 0.5)))
        super().__init__(config)


class FlakyPartialStore(DirStore):
    """Stores only the even-numbered pages of each write batch (partial success)."""

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        out = []
        for i, (key, page) in enumerate(zip(keys, pool.indices_to_pages(host_indices))):
            if i % 2 == 0:
                self._write(key, pool.page_memoryviews(page))
            out.append(i % 2 == 0)
        return out


class FullStore(DirStore):
    """A healthy store that is full: it answers every write with False (after the attach probe,
    ``extra_config["full_after"]`` writes, default 1). Counts the write calls it gets."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        super().__init__(config)
        self.full_after = int(config.extra().get("full_after", 1))
        self.down = bool(config.extra().get("down", False))  # refuses because its server is gone
        self.set_calls = 0
        FULL_STORES.append(self)

    def health_check(self) -> None:
        if self.down:
            raise ConnectionError("storage server 127.0.0.1:1 unreachable")

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self.set_calls += 1
        if self.set_calls <= self.full_after:
            return super().batch_set_v1(keys, host_indices, extra_info)
        return [False] * len(keys)


FULL_STORES: list[FullStore] = []


class SlowReadStore(DirStore):
    """Reads take ``extra_config["read_delay_s"]``; records whether ``close`` ran during a call."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        super().__init__(config)
        self.read_delay_s = float(config.extra().get("read_delay_s", 0.0))
        self.running = 0
        self.closed_while_running: list[int] = []
        self.reads_done = 0
        SLOW_STORES.append(self)

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        self.running += 1
        try:
            time.sleep(self.read_delay_s)
            return super().batch_exists(keys, extra_info)
        finally:
            self.running -= 1
            self.reads_done += 1

    def close(self) -> None:
        self.closed_while_running.append(self.running)
        super().close()


SLOW_STORES: list[SlowReadStore] = []


class FlipFlopStore(DirStore):
    """Every other page call raises (a connection that drops now and then, and works again)."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        super().__init__(config)
        self._calls = 0

    def _flip(self, op: str) -> None:
        self._calls += 1
        if self._calls % 2:
            raise ConnectionResetError(f"{op}: connection reset by peer")

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        self._flip("batch_exists")
        return super().batch_exists(keys, extra_info)

    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self._flip("batch_get_v1")
        return super().batch_get_v1(keys, host_indices, extra_info)


class HangingCtorStore(DirStore):
    """Its constructor blocks until ``HANG`` is set (an unreachable server, no timeout of its own)."""

    def __init__(self, config: HiCacheStorageConfig) -> None:
        HANG.wait()
        super().__init__(config)


HANG = threading.Event()


def make_registry() -> BackendRegistry:
    """A registry with only the test backends (no installed plugins)."""
    reg = BackendRegistry(entry_points_override=[])
    mod = __name__
    reg.register(BackendSpec(name="dirstore", target=f"{mod}:DirStore"))
    reg.register(BackendSpec(name="dirstore2", target=f"{mod}:DirStore"))
    reg.register(BackendSpec(name="brokenctor", target=f"{mod}:FailingCtorStore"))
    reg.register(BackendSpec(name="pagestore", target=f"{mod}:PageLayoutStore"))
    reg.register(BackendSpec(name="partial", target=f"{mod}:FlakyPartialStore"))
    reg.register(BackendSpec(name="slowstore", target=f"{mod}:SlowCtorStore"))
    reg.register(BackendSpec(name="fullstore", target=f"{mod}:FullStore"))
    reg.register(BackendSpec(name="slowread", target=f"{mod}:SlowReadStore"))
    reg.register(BackendSpec(name="hangctor", target=f"{mod}:HangingCtorStore"))
    reg.register(BackendSpec(name="flipflop", target=f"{mod}:FlipFlopStore"))
    return reg


def make_controller(pool: HostKVPool, **kwargs: Any) -> StorageController:
    """A controller over the test registry with short timeouts (tests stay fast)."""
    opts: dict[str, Any] = {
        "registry": make_registry(), "io_timeout_s": 2.0, "quiesce_timeout_s": 2.0, "probe_interval_s": 0.1,
    }
    opts.update(kwargs)
    config = opts.pop("storage_config", HiCacheStorageConfig(model_name="test-model"))
    return StorageController(pool, config, **opts)


def make_pool(layout: str = "page_first", pages: int = 512, is_mla: bool = False) -> HostKVPool:
    return HostKVPool(
        pages * PAGE_SIZE, PAGE_SIZE, layer_num=2, head_num=2, head_dim=8, dtype=torch.float32,
        layout=layout, is_mla=is_mla, pin_memory=False,
    )


def page_content(pool: HostKVPool, page_hash: str) -> torch.Tensor:
    """The deterministic content of the page named ``page_hash`` (a function of the hash)."""
    gen = torch.Generator().manual_seed(int(hashlib.sha256(page_hash.encode()).hexdigest()[:12], 16))
    return torch.randn(pool.page_bytes // pool.itemsize, generator=gen, dtype=torch.float32)


def hashes(n: int, tag: str = "") -> list[str]:
    """``n`` distinct 64-hex page hashes (random per call unless ``tag`` repeats)."""
    base = uuid.uuid5(uuid.NAMESPACE_OID, tag).hex if tag else uuid.uuid4().hex
    return [f"{base[:20]}{i:044x}" for i in range(n)]


def fill_pages(pool: HostKVPool, page_hashes: list[str]) -> torch.Tensor:
    """Allocate host pages and write each hash's content into them; returns their indices."""
    idx = pool.alloc(len(page_hashes) * pool.page_size)
    assert idx is not None, "host pool too small for the test"
    for h, p in zip(page_hashes, pool.indices_to_pages(idx)):
        pool.write_page(p, page_content(pool, h))
    return idx


def check_pages(pool: HostKVPool, page_hashes: list[str], host_indices: torch.Tensor) -> None:
    """Assert each host page holds exactly its hash's bytes."""
    pages = pool.indices_to_pages(host_indices)
    assert len(pages) == len(page_hashes)
    for h, p in zip(page_hashes, pages):
        assert torch.equal(pool.read_page(p), page_content(pool, h)), f"page {h[:12]} differs"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def backup_pages(ctl: StorageController, pool: HostKVPool, page_hashes: list[str]) -> list[bool]:
    """Write the pages of ``page_hashes`` to the host pool, back them up, wait, free them; per-page results."""
    idx = fill_pages(pool, page_hashes)
    got: list[list[bool]] = []
    ctl.backup(page_hashes, idx, got.append)
    wait_for(lambda: bool(got))
    pool.free(idx)
    return got[0]


@pytest.fixture
def poison() -> Iterator[set[str]]:
    POISON.clear()
    yield POISON
    POISON.clear()


@pytest.fixture
def batches() -> Iterator[list[tuple[str, int]]]:
    BATCHES.clear()
    yield BATCHES
    BATCHES.clear()
