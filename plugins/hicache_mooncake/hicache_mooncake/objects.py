"""Object-level Mooncake calls that never raise: per-object results, failures counted by name.

``ObjectClient`` wraps a set-up ``MooncakeDistributedStore``. Every call returns one result
per object; a failure before or around the call (closed, master known down, an exception, a
reply of the wrong length) becomes a failure for each object and is counted once under a
readable name in the ``ErrorTally``. When the master is unreachable every Mooncake call takes
seconds; after the first such failure the client checks the master's TCP port before each call
and fails fast while it is closed.

An object is written from, or read into, one buffer (``ptr``, ``size``) or several
(``[ptr, ...]``, ``[size, ...]``: the pieces of a page that are not contiguous in the host
pool, concatenated in order into one object).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from hicache_core.spec.errors import HiCacheError
from hicache_mooncake import codes
from hicache_mooncake.client import tcp_reachable
from hicache_mooncake.codes import ErrorTally

log = logging.getLogger(__name__)

#: While the master is down, how long one TCP check of its port stays valid.
MASTER_CHECK_INTERVAL_S = 0.5
#: Codes made up here are offset by this so they are counted once (already named) and never
#: mistaken for Mooncake's own.
SYNTHETIC = -10_000
_OK = frozenset({codes.OK})
_EXIST_ANSWERS = frozenset({0, 1})
_REMOVED = frozenset({codes.OK, codes.OBJECT_NOT_FOUND})

#: Buffers per multi-buffer call at most. Mooncake 0.3.13 over TCP fails the objects beyond
#: about 2048 buffers in one call with transfer_failed (-800; measured: 64 pages x 2 objects x
#: 16 layer pieces succeed, 72 pages fail in part), so larger batches are split.
MULTI_BUFFER_LIMIT = 1024

Ptrs = Sequence[int] | Sequence[Sequence[int]]
Sizes = Sequence[int] | Sequence[Sequence[int]]


def _multi(ptrs: Ptrs) -> bool:
    return bool(ptrs) and not isinstance(ptrs[0], int)


def objects_per_call(ptrs: Ptrs, step: int) -> int:
    """Objects per call: ``step``, fewer when each object is many buffers."""
    if not _multi(ptrs):
        return step
    per_object = len(ptrs[0])  # type: ignore[arg-type]
    return max(1, min(step, MULTI_BUFFER_LIMIT // max(1, per_object)))


class ObjectClient:
    """Guarded batch calls on one Mooncake client; ``step`` objects per call at most."""

    def __init__(self, client: Any, master_address: str, step: int) -> None:
        self.client = client
        self.master_address = master_address
        self.step = step
        self.errors = ErrorTally()
        self.closed = False
        self.master_down = False
        #: Calls where the client itself raised (not a return code): it is not handed on.
        self.client_faults = 0
        self._master_checked_at = 0.0
        self._master_lock = threading.Lock()

    # ------------------------------------------------------------------ guard
    def master_gate(self) -> bool:
        """False (fail fast) while the master is known down and its port is still closed."""
        if not self.master_down:
            return True
        with self._master_lock:
            now = time.monotonic()
            if now - self._master_checked_at < MASTER_CHECK_INTERVAL_S:
                return not self.master_down
            self._master_checked_at = now
            if tcp_reachable(self.master_address, timeout_s=0.2) is None:
                self.master_down = False
        return not self.master_down

    def master_answered(self) -> None:
        with self._master_lock:
            self.master_down, self._master_checked_at = False, time.monotonic()

    def _note_codes(self, rcs: Sequence[int]) -> None:
        if rcs and all(rc in codes.MASTER_DOWN for rc in rcs):
            with self._master_lock:
                if not self.master_down:
                    log.warning("mooncake: master %s unreachable; failing fast until it answers", self.master_address)
                self.master_down = True
                self._master_checked_at = time.monotonic()

    def call(self, op: str, n: int, *args: Any) -> list[int]:
        """``client.<op>(*args)`` as one code per object; never raises."""
        if self.closed:
            self.errors.add("closed", n, f"{op} after close()")
            return [codes.INTERNAL_ERROR + SYNTHETIC] * n
        if not self.master_gate():
            self.errors.add("master_unreachable", n, f"{op}: master port closed, not called")
            return [codes.RPC_FAIL + SYNTHETIC] * n
        try:
            out = getattr(self.client, op)(*args)
        except Exception as exc:
            log.warning("mooncake: %s raised %s: %s", op, type(exc).__name__, exc)
            self.client_faults += 1
            self.errors.add("exception", n, f"{op}: {type(exc).__name__}: {exc}")
            return [codes.INTERNAL_ERROR + SYNTHETIC] * n
        rcs: list[int] = out if isinstance(out, list) else list(out) if isinstance(out, tuple) else [int(out)] * n
        if len(rcs) != n:
            self.errors.add("bad_reply", n, f"{op} answered {len(rcs)} codes for {n} keys")
            return [codes.INTERNAL_ERROR + SYNTHETIC] * n
        self._note_codes(rcs)
        return rcs

    def count_failures(self, rcs: Sequence[int], op: str, good: frozenset[int]) -> None:
        for rc in rcs:
            if rc not in good and rc > SYNTHETIC:
                self.errors.add_code(rc, 1, op)

    # ------------------------------------------------------------------ batches
    def put(self, keys: Sequence[str], ptrs: Ptrs, sizes: Sizes) -> list[bool]:
        """Per object: stored, or already there (Mooncake keeps the first value of a key)."""
        op = "batch_put_from_multi_buffers" if _multi(ptrs) else "batch_put_from"
        ok: list[bool] = []
        step = objects_per_call(ptrs, self.step)
        for i in range(0, len(keys), step):
            chunk = keys[i : i + step]
            rcs = self.call(op, len(chunk), list(chunk), list(ptrs[i : i + step]), list(sizes[i : i + step]))
            if any(rcs):
                self.count_failures(rcs, op, _OK)
            ok.extend(rc == 0 for rc in rcs)
        return ok

    def get(self, keys: Sequence[str], ptrs: Ptrs, sizes: Sizes, nbytes: Sequence[int]) -> list[bool]:
        """Per object: exactly ``nbytes[i]`` bytes were read (a miss is not counted as an error)."""
        op = "batch_get_into_multi_buffers" if _multi(ptrs) else "batch_get_into"
        ok: list[bool] = []
        step = objects_per_call(ptrs, self.step)
        for i in range(0, len(keys), step):
            want = nbytes[i : i + step]
            rcs = self.call(op, len(want), list(keys[i : i + step]), list(ptrs[i : i + step]), list(sizes[i : i + step]))
            good = [rc == size for rc, size in zip(rcs, want)]
            ok.extend(good)
            if all(good):
                continue
            for rc, size in zip(rcs, want):
                if rc == size or rc <= SYNTHETIC or rc == codes.OBJECT_NOT_FOUND:
                    continue
                if rc >= 0:  # stored under this name with another size
                    self.errors.add("size_mismatch", 1, f"read {rc} bytes, the page object has {size}")
                else:
                    self.errors.add_code(rc, 1, op)
        return ok

    def exist(self, keys: Sequence[str]) -> list[int]:
        """Per object: 1 present, 0 absent, negative on failure (counted)."""
        out: list[int] = []
        step = self.step
        for i in range(0, len(keys), step):
            rcs = self.call("batch_is_exist", len(keys[i : i + step]), list(keys[i : i + step]))
            if min(rcs, default=0) < 0:
                self.count_failures(rcs, "batch_is_exist", _EXIST_ANSWERS)
            out.extend(rcs)
        return out

    def remove(self, keys: Sequence[str]) -> bool:
        """True when none of ``keys`` is left (absent counts as removed); never forced."""
        rcs = self.call("batch_remove", len(keys), list(keys))
        self.count_failures(rcs, "batch_remove", _REMOVED)
        return all(rc in _REMOVED for rc in rcs)

    def size_of(self, key: str) -> int | None:
        """Bytes of object ``key``; None when absent or unknown (failures counted)."""
        if self.closed or not self.master_gate():
            return None
        try:
            size = int(self.client.get_size(key))
        except Exception:
            return None
        if size < 0:
            if size != codes.OBJECT_NOT_FOUND:
                self.errors.add_code(size, 1, "get_size")
            return None
        return size

    def put_small(self, key: str, value: bytes, pinned: bool = False) -> int:
        """``client.put`` of a small value (Mooncake copies it); the return code.

        ``pinned``: hard-pinned, so eviction and ``remove_all`` leave it (Mooncake builds
        without ``ReplicateConfig.with_hard_pin`` store it unpinned).
        """
        if pinned:
            try:
                from mooncake.store import ReplicateConfig  # type: ignore[import-untyped]

                config = ReplicateConfig()
                config.with_hard_pin = True
                return self.call("put", 1, key, value, config)[0]
            except (ImportError, AttributeError):
                pass
        return self.call("put", 1, key, value)[0]

    def remove_forced(self, key: str) -> bool:
        """Remove one object even under a read lease (only for tiny metadata objects)."""
        (rc,) = self.call("batch_remove", 1, [key], True)
        self.count_failures([rc], "batch_remove", _REMOVED)
        return rc in _REMOVED

    def get_small(self, key: str) -> bytes | None:
        """``client.get`` of a small object: its bytes, ``b""`` when absent, None on failure."""
        if self.closed or not self.master_gate():
            return None
        try:
            value = self.client.get(key)
        except Exception as exc:
            self.errors.add("exception", 1, f"get: {type(exc).__name__}: {exc}")
            return None
        return bytes(value)

    def probe(self, key: str, buf: Any) -> None:
        """Raise ``HiCacheError`` unless ``key`` round-trips through the cluster.

        ``buf`` is a registered uint8 tensor; its size is the probe object's. The object is
        written once (a constant pattern) and read back on every probe. A pool too full for
        the probe still counts as healthy: it serves reads and evicts by itself.
        """
        import torch

        n = buf.numel()
        (present,) = self.call("batch_is_exist", 1, [key])
        if present not in (0, 1):
            raise HiCacheError(f"mooncake: batch_is_exist probe failed ({codes.name_of(present)}, {present})")
        pattern = torch.arange(n, dtype=torch.uint8)
        if present == 0:
            buf.copy_(pattern)
            (rc,) = self.call("batch_put_from", 1, [key], [buf.data_ptr()], [n])
            if rc == codes.NO_AVAILABLE_HANDLE:
                return
            if rc != 0:
                raise HiCacheError(f"mooncake: probe put failed ({codes.name_of(rc)}, {rc})")
        buf.zero_()
        (rc,) = self.call("batch_get_into", 1, [key], [buf.data_ptr()], [n])
        if rc != n or not torch.equal(buf, pattern):
            raise HiCacheError(f"mooncake: probe read failed ({codes.name_of(rc) if rc < 0 else f'{rc} bytes'})")

    # ------------------------------------------------------------------ memory registration
    def register(self, ptr: int, size: int) -> int:
        return int(self.client.register_buffer(ptr, size))

    def unregister(self, ptr: int) -> bool:
        """True when the buffer at ``ptr`` is no longer registered with the client."""
        try:
            rc = self.client.unregister_buffer(ptr)
        except Exception:
            log.debug("unregister_buffer failed", exc_info=True)
            self.client_faults += 1
            return False
        return rc is None or int(rc) == 0

    def detach(self) -> Any:
        """Stop using the client (every call fails as ``closed`` from here on) and return it,
        open, for its owner to close or hand to the next store (``client_pool``)."""
        self.closed = True
        return self.client
