"""What a session is built from and works on: the attach spec, a backup job, a once-only callback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hicache_core.controller.faults import FaultConfig
from hicache_core.controller.policies import PrefetchKnobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachSpec:
    """What an attach asked for, split into the backend's part and the controller's part."""

    backend: str
    extra_config: dict[str, Any]  # as given (knobs and fault keys included)
    backend_extra: dict[str, Any]  # what the backend sees
    knobs: PrefetchKnobs
    faults: FaultConfig | None

    def same_backend(self, other: AttachSpec) -> bool:
        """Same backend and backend configuration (knobs and policies may differ)."""
        return (self.backend, self.backend_extra, self.faults) == (other.backend, other.backend_extra, other.faults)


class _Once:
    """Calls ``fn(results)`` at most once; exceptions from it are logged, never raised."""

    def __init__(self, fn: Callable[[list[bool]], object] | None) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._called = False

    def __call__(self, results: list[bool]) -> None:
        with self._lock:
            if self._called:
                return
            self._called = True
        if self._fn is None:
            return
        try:
            self._fn(results)
        except Exception:
            log.exception("backup on_done callback raised")


@dataclass
class BackupJob:
    page_hashes: list[str]
    keys: list[str]
    host_indices: torch.Tensor
    on_done: _Once
    queued_at: float = field(default_factory=time.monotonic)
