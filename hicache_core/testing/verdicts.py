"""How the kit reports a broken property: one line that names it, then what was seen.

Every check fails through ``violated(property, detail)``, so the first words of a failure
(in pytest's output and in ``hicache check``'s table) are the property in plain words
("namespace isolation", "v1 round trip", ...). ``describe_mismatch`` says *how* a page read
back differs from what was written (truncated, K and V swapped, another page's bytes, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import pytest


def violated(prop: str, detail: str) -> NoReturn:
    """Fail the running check: ``{prop}: {detail}`` (one line)."""
    pytest.fail(f"{prop}: {' '.join(detail.split())}", pytrace=True)


def describe_mismatch(got: bytes, expected: bytes, others: Mapping[str, bytes] | None = None) -> str:
    """How ``got`` differs from ``expected``: a verb phrase ("has ...", "holds ...", "is ...")."""
    if len(got) != len(expected):
        return f"has {len(got)} bytes where the page has {len(expected)} (truncated or padded page)"
    for name, other in (others or {}).items():
        if got == other:
            return f"holds the bytes of {name} (right bytes at the wrong place)"
    half = len(expected) // 2
    if half and got == expected[half:] + expected[:half]:
        return "has its two halves swapped (K and V swapped)"
    if sorted(got) == sorted(expected):
        return "is the same bytes in another order (permuted page)"
    first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    last = len(got) - next(i for i, (a, b) in enumerate(zip(reversed(got), reversed(expected))) if a != b)
    if first and last == len(got):
        return f"differs in bytes {first}..{len(got) - 1} of {len(got)}, the start is right (truncated or torn page)"
    return f"differs in bytes {first}..{last - 1} of {len(got)}"


def require_v1_result(prop: str, call: str, result: Any, n: int) -> list[bool]:
    """``result`` as a list of ``n`` bools, or fail saying what ``call`` returned instead."""
    if not isinstance(result, list) or len(result) != n or not all(isinstance(r, bool) for r in result):
        shown = repr(result)
        violated(prop, f"{call} must return a list of one bool per key ({n}), got {shown[:80]}")
    return result


def require_pages(
    prop: str,
    got: Sequence[bytes],
    expected: Sequence[bytes],
    what: str,
    others: Mapping[str, bytes] | None = None,
    only: Sequence[int] | None = None,
) -> None:
    """Fail unless ``got[i] == expected[i]`` (for each ``i`` in ``only``, default all)."""
    for i in only if only is not None else range(len(expected)):
        if got[i] != expected[i]:
            violated(prop, f"{what}: page {i} read back {describe_mismatch(got[i], expected[i], others)}")
