"""Handing the memory a closed Mooncake client freed back to the operating system.

A Mooncake client runs its own threads (transfer engine, RPC, metadata); what they allocate
lands in glibc's per-thread arenas. When the client closes, that memory is freed but glibc
keeps the arenas' free pages mapped, and the next client's threads do not reuse them all:
measured on a 2-rank node, each attach/detach cycle left about 25 MiB more resident memory
(318 -> 509 MiB in 8 cycles) with no client alive, and a flat 270-275 MiB with
``malloc_trim(0)`` after each close. ``malloc_trim`` returns the free pages of every arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

_LIBC: Any = None
_LOOKED_UP = False


def _libc_malloc_trim() -> Any:
    global _LIBC, _LOOKED_UP
    if not _LOOKED_UP:
        _LOOKED_UP = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = libc.malloc_trim  # glibc only; musl and others have none
            _LIBC.argtypes, _LIBC.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _LIBC = None
    return _LIBC


def return_freed_memory() -> bool:
    """``malloc_trim(0)``: give freed heap pages back to the OS; False where libc has none."""
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:  # never let housekeeping fail a close
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
