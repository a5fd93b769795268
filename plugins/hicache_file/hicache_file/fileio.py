"""System-call helpers shared by the storage schemes: vectored I/O, temporary names, unlinks."""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
log = logging.getLogger("hicache_file")

OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

#: The guard byte read past a page: a file longer than a page fills it, in the same call.
#: What lands in it is never looked at, so threads may share it.
GUARD = bytearray(1)

#: This process's id, for temporary file names (kept current across fork).
_PID = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
_COUNTER = itertools.count()


def tmp_tag() -> str:
    """``<pid>-<n>``: unique among this process's temporary files, and tells whose it is."""
    return f"{_PID[0]}-{next(_COUNTER)}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def tmp_is_stale(pid_text: str, mtime: float, now: float, max_age: float) -> bool:
    """A temporary file is stale when older than ``max_age`` or its writer process is gone."""
    if now - mtime > max_age:
        return True
    return pid_text.isdigit() and not pid_alive(int(pid_text))


def _vectored_all(
    call: Callable[[int, Any, int], int], fd: int, bufs: Sequence[Any], offset: int, total: int | None,
) -> int:
    """``call`` (``os.preadv`` or ``os.pwritev``) over every buffer from ``offset``, looping on
    short transfers and ``IOV_MAX``; returns the bytes moved (less than asked at end of file).
    ``total``: the buffers' byte count when the caller knows it. Within ``IOV_MAX`` buffers the
    first call takes them as given (no views built), which is all a full transfer needs."""
    if len(bufs) <= IOV_MAX:
        if total is None:
            total = sum(memoryview(b).nbytes for b in bufs)
        n = call(fd, bufs, offset)
        if n == total or n <= 0:
            return max(n, 0)
        done = n
    else:
        done = 0
    views = [memoryview(b).cast("B") for b in bufs]
    skip = done
    while views and skip >= len(views[0]):
        skip -= len(views[0])
        views.pop(0)
    if views and skip:
        views[0] = views[0][skip:]
    while views:
        n = call(fd, views[:IOV_MAX], offset + done)
        if n <= 0:
            break
        done += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return done


def pwritev_all(fd: int, bufs: Sequence[Any], offset: int, total: int | None = None) -> int:
    """Write every buffer at ``offset``; returns the bytes written."""
    return _vectored_all(os.pwritev, fd, bufs, offset, total)


def preadv_all(fd: int, bufs: Sequence[Any], offset: int, total: int | None = None) -> int:
    """Fill the buffers from ``offset``; returns bytes read (less at end of file)."""
    return _vectored_all(os.preadv, fd, bufs, offset, total)


def open_page(path: str, stats: Counter[str]) -> int | None:
    """Open a page file to read; None (counted as a miss or a read error) when it cannot be."""
    try:
        return os.open(path, OPEN_READ)
    except FileNotFoundError:
        stats["misses"] += 1
    except OSError as exc:
        stats["read_errors"] += 1
        log.warning("file backend: cannot open %s: %s", path, exc)
    return None


def read_whole(fd: int, bufs: list[Any]) -> int:
    """Fill ``bufs`` from the start of a regular file: one ``preadv`` unless over ``IOV_MAX``."""
    return os.preadv(fd, bufs, 0) if len(bufs) <= IOV_MAX else preadv_all(fd, bufs, 0)


def bytes_view(raw: torch.Tensor) -> memoryview:
    """A writable memoryview of a contiguous CPU uint8 tensor, sharing its memory."""
    return memoryview(raw.numpy())  # type: ignore[arg-type]


def tensor_bytes_view(value: torch.Tensor) -> memoryview:
    """The bytes of a tensor as a memoryview (a CPU copy only when it is not contiguous on CPU)."""
    return bytes_view(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8))


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
