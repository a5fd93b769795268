"""Guarded backend calls: every call runs on an I/O thread with a timeout, nothing propagates.

A call that raises, times out or answers with the wrong shape is a failure of kind
``error``, ``timeout`` or ``bad_result``; the outcome goes to a report callback (metrics and
the circuit breaker) and the caller gets ``CallOutcome(ok=False)``.

Memory safety: a call that timed out may still be reading or writing host-pool pages. The
caller passes ``on_late``; it runs when that call finally returns, and is where the pages
are freed or handed back. Nothing is released while a backend may still touch it.

Calls run on daemon threads (``DaemonPool``), not a ``ThreadPoolExecutor``: the interpreter
joins an executor's threads at exit, so one backend call that never returns would keep the
process from ever exiting, which is exactly the hang the timeout is there to contain.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: ``report(op, kind, detail)``; kind None means success.
Report = Callable[[str, "str | None", str], None]


@dataclass(frozen=True)
class CallOutcome:
    ok: bool
    value: Any = None
    kind: str | None = None  # failure kind when not ok
    detail: str = ""


_Work = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """A fixed pool of daemon threads running submitted calls; see the module docstring."""

    def __init__(self, workers: int, thread_name: str) -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shut = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name}_{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``fn(*args)``; raises RuntimeError after ``shutdown``."""
        fut: Future[Any] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((fut, fn, args))
        return fut

    def shutdown(self, cancel_queued: bool = True) -> None:
        """Refuse new calls and let the threads end once idle; running calls finish on their own.

        Queued calls are cancelled, or with ``cancel_queued=False`` still run first.
        """
        with self._lock:
            if self._shut:
                return
            self._shut = True
        while cancel_queued:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:  # after any queued call: the queue is first in, first out
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run(*item)
            # Dropped before waiting for the next call: an idle thread that still held its last
            # call (its future with the result, its closure) kept whatever that call returned
            # alive; on the admin pool, every backend it had built, with its Mooncake client.
            del item

    @staticmethod
    def _run(fut: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the caller through the future
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class GuardedBackend:
    """Runs calls on a small I/O pool with ``io_timeout_s`` each; see the module docstring.

    It counts the calls still running (a timed-out call keeps running in its thread), so the
    backend is closed only once none is: ``when_idle(fn)`` runs ``fn`` at once when no call
    is running, else when the last one returns.
    """

    def __init__(self, io_timeout_s: float, report: Report, thread_name: str, workers: int = 4) -> None:
        self.io_timeout_s = io_timeout_s
        self._report = report
        self._executor = DaemonPool(workers, thread_name)
        self._closed = threading.Event()
        self._count_lock = threading.Lock()
        self._running = 0
        self._idle_callbacks: list[Callable[[], None]] = []
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Backend calls submitted and not yet returned (timed-out ones included)."""
        with self._count_lock:
            return self._running

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            finally:
                self._call_ended()

        return run

    def _call_ended(self) -> None:
        with self._count_lock:
            self._running -= 1
            if self._running:
                return
            self._idle.set()
            callbacks, self._idle_callbacks = self._idle_callbacks, []
        for cb in callbacks:
            _run_quietly(cb)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every running call to return; True when none runs."""
        return self._idle.wait(timeout_s)

    def when_idle(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once no backend call is running (now, or when the last one returns)."""
        with self._count_lock:
            if self._running:
                self._idle_callbacks.append(fn)
                return
        _run_quietly(fn)

    def call(
        self,
        op: str,
        fn: Callable[..., Any],
        *args: Any,
        check: Callable[[Any], tuple[str, str] | None] | None = None,
        on_late: Callable[[Any], None] | None = None,
        report: bool = True,
        retries: int = 0,
    ) -> CallOutcome:
        """Run ``fn(*args)``; ``check(value)`` returns ``(kind, reason)`` when the answer is a failure.

        ``on_late(value_or_None)`` runs once a timed-out call returns (None if it raised).
        ``retries``: a call that *raised* is tried again up to this many times at once (a
        transient error: a dropped connection, a blip); timeouts and bad answers are not. Only
        the last attempt is reported, so a call that works on its retry is a success.
        """
        out = self._attempt(op, fn, args, check, on_late)
        for _ in range(retries):
            if out.ok or out.kind != "error" or self._closed.is_set():
                break
            log.debug("retrying %s after: %s", op, out.detail)
            out = self._attempt(op, fn, args, check, on_late)
        if report and out.kind != "shutdown":
            self._report(op, None if out.ok else out.kind, "" if out.ok else out.detail)
        return out

    def _attempt(
        self,
        op: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        check: Callable[[Any], tuple[str, str] | None] | None,
        on_late: Callable[[Any], None] | None,
    ) -> CallOutcome:
        if self._closed.is_set():
            return CallOutcome(False, kind="shutdown", detail="backend is being detached")
        with self._count_lock:
            self._running += 1
            self._idle.clear()
        try:
            fut: Future[Any] = self._executor.submit(self._counted(fn), *args)
        except RuntimeError:  # executor shut down between the check and the submit
            self._call_ended()
            return CallOutcome(False, kind="shutdown", detail="backend is being detached")
        fut.add_done_callback(lambda f: self._call_ended() if f.cancelled() else None)
        try:
            value = fut.result(timeout=self.io_timeout_s)
        except FutureTimeout:
            if on_late is not None:
                fut.add_done_callback(lambda f: _late(f, on_late))
            return self._fail(op, "timeout", f"{op} took longer than io_timeout_s={self.io_timeout_s:g}")
        except Exception as exc:
            return self._fail(op, "error", f"{op} raised {type(exc).__name__}: {exc}")
        bad = check(value) if check is not None else None
        if bad is not None:
            return self._fail(op, bad[0], f"{op} {bad[1]}")
        return CallOutcome(True, value)

    def _fail(self, op: str, kind: str, detail: str) -> CallOutcome:
        log.debug("backend call failed: %s", detail)
        return CallOutcome(False, kind=kind, detail=detail)

    def shutdown(self) -> None:
        """Refuse new calls; queued ones are cancelled, running ones finish on their own."""
        self._closed.set()
        self._executor.shutdown()


def _run_quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("a backend idle callback raised")


def _late(fut: Future[Any], on_late: Callable[[Any], None]) -> None:
    try:
        value = None if fut.cancelled() or fut.exception() is not None else fut.result()
        on_late(value)
    except Exception:
        log.exception("releasing resources of a late backend call failed")


def check_bool_list(count: int) -> Callable[[Any], tuple[str, str] | None]:
    """A ``check`` for v1 calls: a list of ``count`` bools.

    An all-False answer is NOT a failure: the backend answered, and said no (a full store,
    pages it refuses, misses). Only raising, timing out or answering with the wrong shape
    counts towards the circuit breaker; refused pages are counted by the caller (kind
    ``refused``) and handled by back-pressure, so a healthy but full store is never detached.
    """

    def _check(value: Any) -> tuple[str, str] | None:
        if not isinstance(value, (list, tuple)) or len(value) != count:
            shown = f"a {type(value).__name__} of {len(value)}" if isinstance(value, (list, tuple)) else repr(value)[:60]
            return "bad_result", f"returned {shown} instead of a list of {count} bools"
        return None

    return _check


def check_count(limit: int) -> Callable[[Any], tuple[str, str] | None]:
    """A ``check`` for ``batch_exists``: an int between 0 and ``limit``."""

    def _check(value: Any) -> tuple[str, str] | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
            return None
        return "bad_result", f"returned {value!r} instead of a count between 0 and {limit}"

    return _check
