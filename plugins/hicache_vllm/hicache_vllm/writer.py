"""Stores staged pages off the engine's step: one daemon thread, a queue, a flush.

``wait_for_save`` hands the step's fully staged pages here and returns, so a request's time to
first token does not include writing its pages to L3. The staging pages stay taken until their
write returns (vLLM's blocks are free to be reused at once: the bytes were copied out). The
thread is a daemon, so a backend call that never returns cannot keep the process from exiting;
``flush`` (at shutdown, and where a caller must see the pages stored) waits with a timeout.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Job = tuple[list[str], list[int]]


class PageWriter:
    def __init__(self, save: Callable[[Sequence[str], Sequence[int]], object],
                 release: Callable[[Sequence[int]], None]) -> None:
        self._save = save
        self._release = release
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="hicache-vllm-writer", daemon=True)
        self._thread.start()

    def submit(self, hashes: list[str], pages: list[int]) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((hashes, pages))

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Wait until every submitted page is written (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            hashes, pages = job
            try:
                self._save(hashes, pages)
            except Exception:  # the store guards its calls; this is a bug, not a backend failure
                log.exception("hicache-vllm: writing %d pages failed", len(hashes))
            finally:
                try:
                    self._release(pages)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()
