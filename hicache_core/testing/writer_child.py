"""A writer in a real child process, for the kit's ``kill -9`` persistence check.

``start_writer`` forks (so the child opens the backend exactly as the test's own
``open_backend`` callable does, closures and all); the child opens the backend, registers a
pool, writes batches of pages with ``batch_set_v1`` and reports each batch on a pipe as JSON
lines (``started``, then ``done`` with the per-page results), then waits to be killed. It never
calls ``close()``. The parent reads the reports with ``WriterChild.wait_for`` and SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import fill_pages


@dataclass
class WriterChild:
    """The parent's handle on the writer child: its pid and the reports read so far."""

    pid: int
    fd: int
    reports: list[dict[str, Any]] = field(default_factory=list)
    _buf: bytes = b""

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """Read reports until one satisfies ``pred`` (returned), the child exits or ``timeout`` passes."""
        for report in self.reports:
            if pred(report):
                return report
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
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
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0

    def stored(self) -> dict[int, list[bool]]:
        """Batch number -> per-page results of every batch the child reported done."""
        return {int(r["batch"]): [bool(x) for x in r["stored"]] for r in self.reports if r.get("event") == "done"}


def start_writer(
    open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage],
    config: HiCacheStorageConfig,
    make_pool: Callable[[], Any],
    batches: list[list[str]],
    seed: int,
) -> WriterChild:
    """Fork a child that writes ``batches`` (batch ``b`` filled with ``fill_pages(.., seed + b)``)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        os.close(read_fd)
        code = 0
        try:
            # The parent's OpenMP worker threads do not exist here; a parallel region would wait
            # for them forever (libgomp after fork). One thread per op is plenty for a writer.
            torch.set_num_threads(1)
            _write(open_backend, config, make_pool, batches, seed, write_fd)
        except BaseException as exc:
            _send(write_fd, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return WriterChild(pid, read_fd)


def _send(fd: int, report: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(report) + "\n").encode())


def _write(
    open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage],
    config: HiCacheStorageConfig,
    make_pool: Callable[[], Any],
    batches: list[list[str]],
    seed: int,
    fd: int,
) -> None:
    backend = open_backend(config)
    pool = make_pool()
    backend.register_mem_pool_host(pool)
    for b, ks in enumerate(batches):
        _send(fd, {"event": "started", "batch": b})
        idx = pool.alloc(len(ks) * pool.page_size)
        fill_pages(pool, pool.indices_to_pages(idx), seed + b)
        stored = backend.batch_set_v1(ks, idx)
        _send(fd, {"event": "done", "batch": b, "stored": [bool(s) for s in (stored or [False] * len(ks))]})
        pool.free(idx)
    _send(fd, {"event": "finished"})
    while True:  # wait for SIGKILL; close() is never called
        time.sleep(1)
