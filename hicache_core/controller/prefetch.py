"""One L3 -> L2 prefetch: the handle a request holds, and the result it takes.

The prefetch worker loads pages batch by batch and *delivers* them to the operation; the
request calls ``wait()`` once, which applies the stop policy, takes what has been delivered
and closes the operation: pages delivered after that are freed by the controller. Page
ownership is therefore never ambiguous: a page is owned by the worker (in flight), by the
operation (delivered, not taken), or by the caller (taken).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class PrefetchResult:
    """What a prefetch delivered.

    ``page_hashes`` are the leading requested pages that were loaded, in order;
    ``host_indices`` their token indices in the host pool, page by page (ownership passes to
    the caller). ``storage_hit_pages`` is how many leading pages L3 reported as present
    (at least ``len(page_hashes)``; more when loading stopped early). ``complete`` is True
    when every page L3 reported was delivered. ``reason`` says why loading stopped before
    the requested pages ("" when it did not): below the threshold, a failed page, a full
    host pool, a backend error or timeout, a detach.
    """

    page_hashes: list[str] = field(default_factory=list)
    host_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    storage_hit_pages: int = 0
    complete: bool = True
    reason: str = ""

    @property
    def pages(self) -> int:
        return len(self.page_hashes)


class PrefetchOperation:
    """A prefetch in progress; see the module docstring. Thread-safe."""

    def __init__(
        self,
        page_hashes: list[str],
        prefix_hashes: list[str],
        page_size: int,
        policy: str,
        timeout_s: float,
        free: Callable[[torch.Tensor], object],
        on_taken: Callable[[PrefetchResult], None] | None = None,
    ) -> None:
        self.page_hashes = list(page_hashes)
        self.prefix_hashes = list(prefix_hashes)
        self.page_size = page_size
        self.policy = policy
        self.timeout_s = timeout_s
        self.started_at = time.monotonic()
        self._free = free
        self._on_taken = on_taken
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._closed = False  # no more deliveries accepted (taken, cancelled or finished)
        self._taken = False
        self._hashes: list[str] = []
        self._indices: list[torch.Tensor] = []
        self._hit_pages = 0
        self._reason = ""

    @property
    def tokens(self) -> int:
        """Tokens this prefetch asks for."""
        return len(self.page_hashes) * self.page_size

    @property
    def done(self) -> bool:
        """True when the worker has finished (everything loaded, truncated, or stopped)."""
        return self._done.is_set()

    @property
    def loaded_pages(self) -> int:
        with self._lock:
            return len(self._hashes)

    # -------------------------------------------------------------- worker side
    def wanted(self) -> bool:
        """False once the request took its result or cancelled: the worker stops loading."""
        with self._lock:
            return not self._closed

    def set_hit_pages(self, pages: int) -> None:
        with self._lock:
            self._hit_pages = pages

    def deliver(self, hashes: list[str], indices: torch.Tensor) -> bool:
        """Hand loaded pages to the operation; False (caller frees them) once it is closed."""
        with self._lock:
            if self._closed:
                return False
            self._hashes.extend(hashes)
            self._indices.append(indices)
            return True

    def finish(self, reason: str = "") -> None:
        """The worker (or a detach) is done with this operation; nothing more will arrive."""
        with self._lock:
            self._closed = True
            if reason and not self._reason:
                self._reason = reason
        self._done.set()

    # -------------------------------------------------------------- request side
    def wait(self) -> PrefetchResult:
        """Apply the stop policy and take what arrived; may be called once.

        ``best_effort`` returns at once, ``wait_complete`` waits until the worker is done,
        ``timeout`` waits at most ``timeout_s`` from the start of the prefetch.
        """
        if self.policy == "wait_complete":
            self._done.wait()
        elif self.policy == "timeout":
            self._done.wait(max(0.0, self.started_at + self.timeout_s - time.monotonic()))
        with self._lock:
            if self._taken:
                raise RuntimeError("PrefetchOperation.wait() may be called once; its pages were already taken")
            self._taken = True
            self._closed = True
            complete = self._done.is_set() and len(self._hashes) >= self._hit_pages
            result = PrefetchResult(
                page_hashes=list(self._hashes),
                host_indices=torch.cat(self._indices) if self._indices else torch.empty(0, dtype=torch.int64),
                storage_hit_pages=max(self._hit_pages, len(self._hashes)),
                complete=complete,
                reason=self._reason,
            )
            self._hashes, self._indices = [], []
        if self._on_taken is not None:
            self._on_taken(result)
        return result

    def cancel(self) -> None:
        """Give everything back (the request went away); later deliveries are freed too."""
        with self._lock:
            self._closed = True
            self._taken = True
            indices, self._hashes, self._indices = self._indices, [], []
        for idx in indices:
            self._free(idx)

    def __repr__(self) -> str:
        return (
            f"PrefetchOperation(pages={len(self.page_hashes)}, loaded={self.loaded_pages}, "
            f"policy={self.policy}, done={self.done})"
        )
