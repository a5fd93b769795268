"""Mooncake Store return codes: names, meanings, and a thread-safe tally.

Mooncake's Python client reports failures as negative ints, never exceptions; the backend
turns each into a per-page False/None and counts it here under a readable name, so
``get_stats()`` says *why* pages failed (no space, not found, transfer failed, master
unreachable, ...).
"""

from __future__ import annotations

import threading
from collections import Counter

OK = 0
INTERNAL_ERROR = -1
NO_AVAILABLE_HANDLE = -200
INVALID_PARAMS = -600
OBJECT_NOT_FOUND = -704
OBJECT_HAS_LEASE = -706
TRANSFER_FAIL = -800
RPC_FAIL = -900

#: code -> short name used as the counter key (Mooncake's ErrorCode enum, lower-cased).
NAMES: dict[int, str] = {
    -1: "internal_error",
    -2: "not_implemented",
    -10: "buffer_overflow",
    -100: "shard_index_out_of_range",
    -101: "segment_not_found",
    -102: "segment_already_exists",
    -103: "client_not_found",
    -105: "client_unhealthy",
    -106: "no_available_candidate",
    -200: "no_space",
    -300: "invalid_version",
    -400: "invalid_key",
    -500: "write_fail",
    -600: "bad_params",
    -601: "illegal_client",
    -700: "invalid_write",
    -701: "invalid_read",
    -702: "invalid_replica",
    -703: "replica_not_ready",
    -704: "not_found",
    -705: "object_already_exists",
    -706: "leased",
    -707: "lease_expired",
    -708: "object_has_replication_task",
    -710: "replica_not_found",
    -712: "replica_is_gone",
    -714: "replica_is_processing",
    -800: "transfer_failed",
    -900: "master_unreachable",
    -901: "heartbeat_unreachable",
    -1010: "unavailable_in_current_status",
    -1600: "shutting_down",
}

#: Codes that mean the master cannot be reached (the fast-fail guard watches for them).
MASTER_DOWN: frozenset[int] = frozenset({RPC_FAIL, -901, -902})


def name_of(code: int) -> str:
    """The counter name of a Mooncake return code (``error_<n>`` for codes not listed)."""
    return NAMES.get(code, f"error_{-code}" if code < 0 else f"code_{code}")


class ErrorTally:
    """Counts of failures by name; thread-safe; also remembers the last failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.last: str = ""

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        if n <= 0:
            return
        with self._lock:
            self._counts[name] += n
            self.last = f"{name}: {detail}" if detail else name

    def add_code(self, code: int, n: int = 1, op: str = "") -> None:
        self.add(name_of(code), n, f"{op} returned {code}" if op else f"returned {code}")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
