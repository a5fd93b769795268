"""A failure-injection wrapper around any backend: random delay, random failures, kill switch.

Configured by the extra-config key ``fault_injection`` (a dict) or by environment variables;
extra-config wins key by key. The controller wraps a backend it creates whenever either is
set. Keys / variables:

==================  ============================  ==============================================
key                 env var                       meaning
==================  ============================  ==============================================
``fail_prob``       ``HICACHE_FAULT_FAIL_PROB``   probability that a call raises ``InjectedFault``
``page_fail_prob``  ``HICACHE_FAULT_PAGE_FAIL``   probability that one page of a v1 call is False
``delay_ms``        ``HICACHE_FAULT_DELAY_MS``    delay before each call: ``x`` or ``[lo, hi]``
                                                  (uniform; env: ``"lo,hi"``)
``seed``            ``HICACHE_FAULT_SEED``        seed of the random generator (repeatable runs)
``fail_all``        ``HICACHE_FAULT_FAIL_ALL``    start with every call failing (``1``)
``switch``          ``HICACHE_FAULT_SWITCH``      name of a shared ``FaultSwitch``; instances
                                                  created later (re-attach, probes) see the same
==================  ============================  ==============================================

A test flips ``fault_switch(name).fail_all`` (or ``wrapper.switch.fail_all``) at run time to
make the backend fail everything, e.g. to open the controller's circuit breaker, and
``refuse_all`` to make it answer every write "not stored" (a full store: not a failure).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.spec.config import HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError
from hicache_core.spec.storage import HiCacheStorage

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

FAULT_KEY = "fault_injection"
ENV_PREFIX = "HICACHE_FAULT_"
_ENV = {
    "fail_prob": "HICACHE_FAULT_FAIL_PROB",
    "page_fail_prob": "HICACHE_FAULT_PAGE_FAIL",
    "delay_ms": "HICACHE_FAULT_DELAY_MS",
    "seed": "HICACHE_FAULT_SEED",
    "fail_all": "HICACHE_FAULT_FAIL_ALL",
    "switch": "HICACHE_FAULT_SWITCH",
}


class InjectedFault(OSError):
    """The failure the wrapper raises (an ``OSError``, like a real I/O failure)."""


@dataclass
class FaultSwitch:
    """Run-time switches shared by every wrapper that names the same switch."""

    fail_all: bool = False
    #: Extra delay (seconds) added to every call while set; to provoke timeouts.
    hang_s: float = 0.0
    #: While set, writes answer every page False without storing it: a full (or refusing) store.
    refuse_all: bool = False


_SWITCHES: dict[str, FaultSwitch] = {}
_SWITCHES_LOCK = threading.Lock()


def fault_switch(name: str) -> FaultSwitch:
    """The process-wide switch called ``name`` (created on first use)."""
    with _SWITCHES_LOCK:
        return _SWITCHES.setdefault(name, FaultSwitch())


@dataclass(frozen=True)
class FaultConfig:
    fail_prob: float = 0.0
    page_fail_prob: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None
    fail_all: bool = False
    switch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["delay_ms"] = list(self.delay_ms)
        return out


def _prob(key: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise BackendConfigError(f"{FAULT_KEY}.{key} must be a probability between 0 and 1, got {raw!r}")
    return value


def _delay(raw: Any) -> tuple[float, float]:
    if isinstance(raw, str):
        raw = [p for p in raw.replace(" ", "").split(",") if p]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = [raw, raw]
    try:
        lo, hi = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise BackendConfigError(
            f"{FAULT_KEY}.delay_ms must be a number or [lo, hi] in milliseconds, got {raw!r}"
        ) from None
    if lo < 0 or hi < lo:
        raise BackendConfigError(f"{FAULT_KEY}.delay_ms needs 0 <= lo <= hi, got [{lo}, {hi}]")
    return lo, hi


def _flag(raw: Any) -> bool:
    return str(raw).strip().lower() in ("1", "true", "yes", "on")


def parse_fault_config(
    extra: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> FaultConfig | None:
    """The fault configuration from extra-config and environment; None when neither sets one."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {key: env[var] for key, var in _ENV.items() if env.get(var)}
    given = (extra or {}).get(FAULT_KEY)
    if given is not None:
        if not isinstance(given, Mapping):
            raise BackendConfigError(
                f"extra-config key {FAULT_KEY!r} must be an object such as "
                '{"fail_prob": 0.1, "delay_ms": [0, 5], "seed": 1}, got ' + repr(given)
            )
        unknown = sorted(set(given) - set(_ENV))
        if unknown:
            raise BackendConfigError(
                f"{FAULT_KEY}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_ENV)}"
            )
        raw.update(given)
    if not raw:
        return None
    seed = raw.get("seed")
    try:
        seed_value = None if seed is None else int(seed)
    except (TypeError, ValueError):
        raise BackendConfigError(f"{FAULT_KEY}.seed must be an integer, got {seed!r}") from None
    return FaultConfig(
        fail_prob=_prob("fail_prob", raw.get("fail_prob", 0.0)),
        page_fail_prob=_prob("page_fail_prob", raw.get("page_fail_prob", 0.0)),
        delay_ms=_delay(raw.get("delay_ms", 0.0)),
        seed=seed_value,
        fail_all=_flag(raw.get("fail_all", False)),
        switch=str(raw["switch"]) if raw.get("switch") else None,
    )


class FaultInjectingStorage(HiCacheStorage):
    """Wraps ``inner`` and injects delays and failures before forwarding each call.

    Failures are ``InjectedFault`` exceptions (whole calls) or False pages (v1 calls); the
    random generator is seeded so a run can be repeated. Thread-safe.
    """

    def __init__(self, inner: HiCacheStorage, faults: FaultConfig) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.faults = faults
        self.switch = fault_switch(faults.switch) if faults.switch else FaultSwitch()
        if faults.fail_all:
            self.switch.fail_all = True
        self.capabilities = inner.capabilities  # type: ignore[misc]  # per instance, from inner
        self.mem_pool_host = inner.mem_pool_host
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {"calls": 0, "failures": 0, "page_failures": 0}

    # -------------------------------------------------------------- injection
    def _before(self, op: str) -> None:
        lo, hi = self.faults.delay_ms
        with self._lock:
            self.injected["calls"] += 1
            delay = self._rng.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
            fail = self._rng.random() < self.faults.fail_prob
        delay += self.switch.hang_s
        if delay > 0:
            time.sleep(delay)
        if fail or self.switch.fail_all:
            with self._lock:
                self.injected["failures"] += 1
            raise InjectedFault(f"injected failure in {op}")

    def _page_faults(self, results: list[bool]) -> list[bool]:
        if self.faults.page_fail_prob <= 0:
            return results
        out: list[bool] = []
        with self._lock:
            for ok in results:
                failed = self._rng.random() < self.faults.page_fail_prob
                self.injected["page_failures"] += int(failed and ok)
                out.append(ok and not failed)
        return out

    # -------------------------------------------------------------- lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        self.inner.register_mem_pool_host(mem_pool_host)
        self.mem_pool_host = mem_pool_host

    def close(self) -> None:
        self.inner.close()

    def clear(self) -> None:
        self._before("clear")
        self.inner.clear()

    def delete(self, key: str) -> bool:
        self._before("delete")
        return self.inner.delete(key)

    def get_stats(self) -> dict[str, Any] | None:
        stats = dict(self.inner.get_stats() or {})
        with self._lock:
            stats["fault_injection"] = {**self.faults.to_dict(), **self.injected, "fail_all": self.switch.fail_all}
        return stats

    def health_check(self) -> None:
        self._before("health_check")
        self.inner.health_check()

    # -------------------------------------------------------------- I/O
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        self._before("get")
        return self.inner.get(key, target_location, target_sizes)

    def set(
        self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        self._before("set")
        return self.inner.set(key, value, target_location, target_sizes)

    def exists(self, key: str) -> bool:
        self._before("exists")
        return self.inner.exists(key)

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        self._before("batch_get")
        return self.inner.batch_get(keys, target_locations, target_sizes)

    def batch_set(
        self,
        keys: list[str],
        values: Any | None = None,
        target_locations: Any | None = None,
        target_sizes: Any | None = None,
    ) -> bool:
        self._before("batch_set")
        return self.inner.batch_set(keys, values, target_locations, target_sizes)

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        self._before("batch_exists")
        return self.inner.batch_exists(keys, extra_info)

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        self._before("exists_many")
        return self.inner.exists_many(keys, extra_info)

    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self._before("batch_get_v1")
        return self._page_faults(self.inner.batch_get_v1(keys, host_indices, extra_info))

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        self._before("batch_set_v1")
        if self.switch.refuse_all:
            with self._lock:
                self.injected["refused_pages"] = self.injected.get("refused_pages", 0) + len(keys)
            return [False] * len(keys)
        # A page "failed" after the write still landed in the store; it is reported False, as a
        # store that lost the acknowledgement would. Never corrupts what is stored.
        return self._page_faults(self.inner.batch_set_v1(keys, host_indices, extra_info))


def strip_fault_key(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` without the ``fault_injection`` key (what the wrapped backend sees)."""
    return {k: v for k, v in extra.items() if k != FAULT_KEY}


__all__ = [
    "FAULT_KEY",
    "FaultConfig",
    "FaultInjectingStorage",
    "FaultSwitch",
    "InjectedFault",
    "fault_switch",
    "parse_fault_config",
    "strip_fault_key",
]

