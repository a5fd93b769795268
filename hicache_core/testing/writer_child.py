"""A writer in a real child process, for the kit's ``kill -9`` persistence check.

``start_writer`` forks (so the child opens the backend exactly as the test's own
``open_backend`` callable does, closures and all); the child opens the backend, registers a
pool, writes batch after batch of pages with ``batch_set_v1`` (batch ``b``'s keys are
``batch_keys(prefix, b)``, its pages ``fill_pages(.., seed + b)``) and reports each on a pipe as
JSON lines (``started``, then ``done`` with the per-page results). It keeps writing until
``max_batches``, then waits; it never calls ``close()``. The parent reads the reports with
``WriterChild.wait_for`` and SIGKILLs it, most likely in the middle of a batch.

``spawn_writer`` does the same in a fresh interpreter (``python -m
hicache_core.testing.writer_child SPEC``), creating an installed backend by name, for backends
whose libraries do not survive a fork.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import fill_pages


@dataclass(frozen=True)
class WritePlan:
    """What the writer writes: up to ``max_batches`` batches of ``pages`` pages."""

    prefix: str
    seed: int
    pages: int = 4
    max_batches: int = 64


@dataclass
class WriterChild:
    """The parent's handle on the writer child: its pid and the reports read so far."""

    pid: int
    fd: int
    #: Set when the child is a spawned interpreter (``spawn_writer``), None when forked.
    proc: subprocess.Popen[bytes] | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    _buf: bytes = b""

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """Read reports until one satisfies ``pred`` (returned), the child exits or ``timeout`` passes."""
        for report in self.reports:
            if pred(report):
                return report
        deadline = time.monotonic() + timeout
        # poll, not select: a test process with many open descriptors (RocksDB, io_uring...)
        # hands out fd numbers past select's 1024 limit.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(left * 1000):
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None  # the child is gone
            self._buf += chunk
            *lines, rest = self._buf.split(b"\n")
            self._buf = rest
            for line in lines:
                got: dict[str, Any] = dict(json.loads(line))
                self.reports.append(got)
                if got.get("event") == "error" or pred(got):
                    return got
        return None

    def kill9(self) -> int:
        """SIGKILL the child and reap it; the signal that ended it (9 unless it had exited)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            code = self.proc.wait()
            signal_no = -code if code < 0 else 0
        else:
            _, status = os.waitpid(self.pid, 0)
            signal_no = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        self.wait_for(lambda _: False, timeout=5)  # what it reported before it died
        os.close(self.fd)
        return signal_no

    def started(self) -> int:
        """How many batches the child started (reported ``started``)."""
        return 1 + max((int(r["batch"]) for r in self.reports if r.get("event") == "started"), default=-1)

    def stored(self) -> dict[int, list[bool]]:
        """Batch number -> per-page results of every batch the child reported done."""
        return {int(r["batch"]): [bool(x) for x in r["stored"]] for r in self.reports if r.get("event") == "done"}


def batch_keys(prefix: str, batch: int, pages: int) -> list[str]:
    """The keys of the writer's batch ``batch``: 64 characters, unique to ``prefix``."""
    return [f"{prefix}{batch:06d}{i:06d}".ljust(64, "0") for i in range(pages)]


def start_writer(
    open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage],
    config: HiCacheStorageConfig,
    make_pool: Callable[[], Any],
    plan: WritePlan,
) -> WriterChild:
    """Fork a child that writes the batches of ``plan`` one after another."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        os.close(read_fd)
        code = 0
        try:
            # The parent's OpenMP worker threads do not exist here; a parallel region would wait
            # for them forever (libgomp after fork). One thread per op is plenty for a writer.
            torch.set_num_threads(1)
            _write(open_backend, config, make_pool, plan, write_fd)
        except BaseException as exc:
            _send(write_fd, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return WriterChild(pid, read_fd)


def spawn_writer(
    backend_name: str, config: HiCacheStorageConfig, pool_shape: dict[str, Any], layout: str, plan: WritePlan
) -> WriterChild:
    """Start ``python -m hicache_core.testing.writer_child`` writing through ``create_backend(backend_name)``."""
    read_fd, write_fd = os.pipe()
    shape = {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v) for k, v in pool_shape.items()}
    spec = {
        "backend": backend_name, "config": dataclasses.asdict(config), "pool": shape, "layout": layout,
        "plan": dataclasses.asdict(plan), "fd": write_fd,
    }
    proc = subprocess.Popen([sys.executable, "-m", "hicache_core.testing.writer_child", json.dumps(spec)],
                            pass_fds=(write_fd,))
    os.close(write_fd)
    return WriterChild(proc.pid, read_fd, proc=proc)


def _spawned_main(spec_text: str) -> None:
    """The spawned writer: build backend and pool from the JSON spec, then write."""
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.plugins.factory import create_backend

    spec = json.loads(spec_text)
    fd = int(spec["fd"])
    try:
        shape = dict(spec["pool"])
        shape["dtype"] = getattr(torch, shape["dtype"])

        def make_pool() -> HostKVPool:
            return HostKVPool(
                size=shape["pages"] * shape["page_size"], page_size=shape["page_size"], layer_num=shape["layer_num"],
                head_num=shape["head_num"], head_dim=shape["head_dim"], dtype=shape["dtype"], layout=spec["layout"],
            )

        def open_backend(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend(spec["backend"], config)

        _write(open_backend, HiCacheStorageConfig(**spec["config"]), make_pool, WritePlan(**spec["plan"]), fd)
    except BaseException as exc:
        _send(fd, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        raise


def _send(fd: int, report: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(report) + "\n").encode())


def _write(
    open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage],
    config: HiCacheStorageConfig,
    make_pool: Callable[[], Any],
    plan: WritePlan,
    fd: int,
) -> None:
    backend = open_backend(config)
    pool = make_pool()
    backend.register_mem_pool_host(pool)
    for b in range(plan.max_batches):
        ks = batch_keys(plan.prefix, b, plan.pages)
        idx = pool.alloc(len(ks) * pool.page_size)
        fill_pages(pool, pool.indices_to_pages(idx), plan.seed + b)
        # "started" right before the write: the kit kills while a batch is being written.
        _send(fd, {"event": "started", "batch": b})
        stored = backend.batch_set_v1(ks, idx)
        _send(fd, {"event": "done", "batch": b, "stored": [bool(s) for s in (stored or [False] * len(ks))]})
        pool.free(idx)
    _send(fd, {"event": "finished"})
    while True:  # wait for SIGKILL; close() is never called
        time.sleep(1)


if __name__ == "__main__":
    _spawned_main(sys.argv[1])
