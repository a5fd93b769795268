"""The one exception the controller's admin operations raise."""

from __future__ import annotations

from hicache_core.spec.errors import HiCacheError


class ControllerError(HiCacheError):
    """An admin operation (attach, detach) was refused or failed; the state was rolled back.

    The message says why and, where there is one, what to do. Request-path calls (prefetch,
    backup) never raise it: they answer with misses instead.
    """
