"""Prefetch stop policies, write policies and the prefetch knobs carried in extra-config."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hicache_core.controller.errors import ControllerError

PREFETCH_POLICIES: tuple[str, ...] = ("best_effort", "wait_complete", "timeout")
WRITE_POLICIES: tuple[str, ...] = ("write_through", "write_through_selective", "write_back")
BACKUP_EVENTS: tuple[str, ...] = ("insert", "hit", "evict")

DEFAULT_PREFETCH_POLICY = "best_effort"
DEFAULT_WRITE_POLICY = "write_through"

#: Extra-config keys the controller reads itself; they are not handed to the backend.
KNOB_KEYS: tuple[str, ...] = ("prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token")
#: SGLang's controller knobs that hicache's controller accepts and needs no value of: it always
#: passes prefix keys (``hicache_storage_pass_prefix_keys``). Taken out, as SGLang does, so a
#: backend never sees them.
SGLANG_CONTROLLER_KEYS: tuple[str, ...] = ("hicache_storage_pass_prefix_keys",)

#: Hits needed before ``write_through_selective`` backs a page up (SGLang's threshold).
SELECTIVE_HIT_THRESHOLD = 2


def check_prefetch_policy(policy: str) -> str:
    if policy not in PREFETCH_POLICIES:
        raise ControllerError(
            f"unknown prefetch policy {policy!r}; use one of {', '.join(PREFETCH_POLICIES)}"
        )
    return policy


def check_write_policy(policy: str) -> str:
    if policy not in WRITE_POLICIES:
        raise ControllerError(f"unknown write policy {policy!r}; use one of {', '.join(WRITE_POLICIES)}")
    return policy


def write_policy_allows(policy: str, event: str, hit_count: int = 1) -> bool:
    """Whether ``policy`` backs a page up on ``event`` (``insert``, ``hit`` or ``evict``).

    ``write_through``: on insertion into L2; ``write_through_selective``: on a hit once the
    page has been hit at least twice; ``write_back``: on eviction from L2.
    """
    if event not in BACKUP_EVENTS:
        raise ValueError(f"unknown backup event {event!r}; use one of {', '.join(BACKUP_EVENTS)}")
    if policy == "write_through":
        return event == "insert"
    if policy == "write_through_selective":
        return event == "hit" and hit_count >= SELECTIVE_HIT_THRESHOLD
    if policy == "write_back":
        return event == "evict"
    raise ValueError(f"unknown write policy {policy!r}")


@dataclass(frozen=True)
class PrefetchKnobs:
    """The prefetch knobs (REFERENCE §4): threshold in tokens and the timeout policy's budget."""

    prefetch_threshold: int = 256
    prefetch_timeout_base: float = 1.0
    prefetch_timeout_per_ki_token: float = 0.25

    def timeout_for(self, tokens: int) -> float:
        """Seconds the ``timeout`` policy waits for a prefetch of ``tokens`` tokens."""
        return self.prefetch_timeout_base + self.prefetch_timeout_per_ki_token * tokens / 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_extra_config(extra: dict[str, Any] | None) -> tuple[PrefetchKnobs, dict[str, Any]]:
    """Take the prefetch knobs out of ``extra``; returns ``(knobs, the rest)``.

    A knob with a bad value raises ``ControllerError`` naming the key.
    """
    rest = dict(extra or {})
    for key in SGLANG_CONTROLLER_KEYS:
        rest.pop(key, None)
    values: dict[str, Any] = {}
    defaults = PrefetchKnobs()
    for key in KNOB_KEYS:
        if key not in rest:
            continue
        raw = rest.pop(key)
        try:
            number = float(raw)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(raw, bool) or not math.isfinite(number) or number < 0:
            raise ControllerError(
                f"extra-config key {key!r} must be a non-negative number, got {raw!r} "
                f"(default {getattr(defaults, key)})"
            )
        values[key] = int(number) if key == "prefetch_threshold" else number
    return PrefetchKnobs(**values), rest
