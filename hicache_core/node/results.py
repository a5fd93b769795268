"""What a rank answers for one request, and the counters it keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TIERS: tuple[str, ...] = ("device", "host", "storage")


@dataclass
class RequestResult:
    """What one request found, like SGLang's ``cached_tokens_details`` plus timings."""

    rid: str
    rank: int
    input_tokens: int
    cached: dict[str, int]
    computed_tokens: int
    storage_backend: str | None
    verify_errors: int
    bytes_loaded: dict[str, int]
    timings_ms: dict[str, float]
    pages: int = 0
    prefetch_note: str = ""

    @property
    def cached_tokens(self) -> int:
        return sum(self.cached.values())

    def to_dict(self) -> dict[str, Any]:
        details: dict[str, Any] = dict(self.cached)
        details["storage_backend"] = self.storage_backend
        return {
            "rid": self.rid,
            "rank": self.rank,
            "meta_info": {
                "prompt_tokens": self.input_tokens,
                "cached_tokens": self.cached_tokens,
                "cached_tokens_details": details,
            },
            "cached_tokens_details": details,
            "input_tokens": self.input_tokens,
            "computed_tokens": self.computed_tokens,
            "pages": self.pages,
            "verify_errors": self.verify_errors,
            "bytes_loaded": self.bytes_loaded,
            "timings_ms": self.timings_ms,
            "prefetch_note": self.prefetch_note,
        }


@dataclass
class RankCounters:
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    computed_tokens: int = 0
    verify_errors: int = 0
    verified_pages: int = 0
    bytes_loaded_host_to_device: int = 0
    bytes_loaded_storage_to_host: int = 0
    bytes_stored: int = 0  # L2 -> L3, confirmed by the backend
    bytes_device_to_host: int = 0
    backup_pages_queued: int = 0
    backup_pages_failed: int = 0
    evicted_device_pages: int = 0
    evicted_host_pages: int = 0
    prefetch_ops: int = 0
    prefetch_pages: int = 0
    backup_waits: int = 0  # times a full L2 waited for backups (back-pressure)
    resync_pages: int = 0  # L2 pages backed up again after a new storage epoch (re-attach)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["cached_tokens"] = dict(self.cached_tokens)
        return out
