"""Mooncake clients kept across attaches in one process, one set per connection config.

Every attach, re-attach after a breaker trip and health probe used to set a new
``MooncakeDistributedStore`` up and close it again. Each client starts about 28 threads and
allocates its buffers afresh; what those threads free stays in glibc's arenas, so a node's
RSS stepped up with every client it built (a 2-rank node in the soak: 364 -> 538 MiB over
8 clients in 85 s). A closed store hands its client back here instead; the next store with
the same settings takes it, so a detach/attach or a breaker re-attach builds nothing.

Rules that keep a reused client as good as a new one:

- one store at a time uses a client (a lease, not sharing): registrations, the master-down
  state and counters stay per store, as before;
- a client comes back only when its store unregistered every buffer it registered and never
  saw the client itself fail (a health check that failed while the master answered, or a
  binding that raised); otherwise it is closed (``reusable=False``);
- a Mooncake client outlives a master restart (measured: puts and gets succeed again as soon
  as the new master answers), so clients released while the master was down are kept;
- only clients that contribute no memory (``global_segment_size`` 0) are kept: one that
  contributes a segment is closed at once, so a detached node stops serving its memory;
- at most ``MAX_IDLE_PER_CONFIG`` idle clients per config, each closed after
  ``HICACHE_MOONCAKE_CLIENT_LINGER_S`` seconds unused (default 60; 0 turns reuse off), and all at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from hicache_mooncake.client import open_client
from hicache_mooncake.config import MooncakeSettings
from hicache_mooncake.heap import return_freed_memory

log = logging.getLogger(__name__)

LINGER_ENV = "HICACHE_MOONCAKE_CLIENT_LINGER_S"
DEFAULT_LINGER_S = 60.0
#: Idle clients kept per config (a node with --dp-size N releases N at a detach).
MAX_IDLE_PER_CONFIG = 4


def linger_from_env() -> float:
    raw = os.environ.get(LINGER_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_LINGER_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", LINGER_ENV, raw, DEFAULT_LINGER_S)
        return DEFAULT_LINGER_S


def close_client(client: Any) -> None:
    """Close a client for good and hand what its threads freed back to the OS (``heap``)."""
    try:
        client.close()
    except Exception:
        log.debug("mooncake client close failed", exc_info=True)
    return_freed_memory()


class ClientPool:
    """Idle clients by settings; see the module docstring. Thread-safe."""

    def __init__(self, linger_s: float | None = None, opener: Callable[[MooncakeSettings], Any] = open_client,
                 closer: Callable[[Any], None] = close_client) -> None:
        self.linger_s = linger_from_env() if linger_s is None else linger_s
        self._opener = opener
        self._closer = closer
        self._lock = threading.Lock()
        self._idle: dict[MooncakeSettings, list[tuple[Any, float]]] = {}
        self._reaper: threading.Timer | None = None
        #: The process whose clients these are: a forked child inherits the objects but not the
        #: clients' threads or connections, so it must neither use nor close them.
        self._pid = os.getpid()
        #: Clients set up, handed out again, and closed: for status and tests.
        self.opened = 0
        self.reused = 0
        self.closed = 0

    def idle(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def acquire(self, settings: MooncakeSettings) -> Any:
        """An idle client for ``settings``, else a newly set-up one (``open_client``'s errors)."""
        with self._lock:
            kept = self._idle.get(settings)
            if kept:
                client, _ = kept.pop()
                self.reused += 1
                return client
        client = self._opener(settings)
        with self._lock:
            self.opened += 1
        return client

    def release(self, settings: MooncakeSettings, client: Any, reusable: bool) -> None:
        """Keep ``client`` for the next store with ``settings``, or close it (see the rules)."""
        keep = reusable and self.linger_s > 0 and settings.global_segment_size == 0
        surplus: list[Any] = [client]
        if keep:
            with self._lock:
                kept = self._idle.setdefault(settings, [])
                kept.append((client, time.monotonic()))
                surplus = [c for c, _ in kept[:-MAX_IDLE_PER_CONFIG]]
                del kept[:-MAX_IDLE_PER_CONFIG]
            self._schedule_reap()
        for c in surplus:
            self._close(c)

    def reap(self, now: float | None = None) -> int:
        """Close the clients idle for ``linger_s`` or longer; how many were closed."""
        now = time.monotonic() if now is None else now
        expired: list[Any] = []
        with self._lock:
            for key in list(self._idle):
                fresh = [(c, t) for c, t in self._idle[key] if now - t < self.linger_s]
                expired += [c for c, t in self._idle[key] if now - t >= self.linger_s]
                if fresh:
                    self._idle[key] = fresh
                else:
                    del self._idle[key]
        for c in expired:
            self._close(c)
        return len(expired)

    def close_idle(self, master_server_address: str | None = None) -> int:
        """Close the idle clients of one master (all when None); how many were closed."""
        with self._lock:
            keys = [k for k in self._idle if master_server_address in (None, k.master_server_address)]
            clients = [c for k in keys for c, _ in self._idle.pop(k)]
        for c in clients:
            self._close(c)
        return len(clients)

    def close_all(self) -> None:
        """Close every idle client (at exit, and for tests); nothing in a forked child."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
        self.close_idle()

    def _close(self, client: Any) -> None:
        self._closer(client)
        with self._lock:
            self.closed += 1

    def _schedule_reap(self) -> None:
        with self._lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            timer = threading.Timer(self.linger_s + 0.5, self._reap_and_reschedule)
            timer.name, timer.daemon = "hicache-mooncake-reaper", True
            self._reaper = timer
        timer.start()

    def _reap_and_reschedule(self) -> None:
        self.reap()
        with self._lock:
            self._reaper = None
            more = bool(self._idle)
        if more:
            self._schedule_reap()


_POOL: ClientPool | None = None
_POOL_LOCK = threading.Lock()


def _forget_in_child() -> None:
    """After fork: the child starts with no pool (and a fresh lock, which another thread of the
    parent may have held at the fork)."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def client_pool() -> ClientPool:
    """The process-wide pool (created on first use; its idle clients are closed at exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            _POOL = ClientPool()
            atexit.register(_POOL.close_all)
        return _POOL
