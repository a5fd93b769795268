"""What a read through the tensor API must give back, and what a removed page must look like.

Shared by the kit's checks: ``staged_target`` (a read target that holds other bytes first, so
a read that reports a hit but writes nothing cannot pass), ``require_page`` /
``require_target_read`` (the bytes, dtype and length a ``get`` returns, and that the page
landed in ``target_location``), and ``require_gone`` (a removed page is a miss through every
call: ``exists``, ``exists_many``, ``batch_exists``, ``get``, ``batch_get``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import random_page, tensor_bytes
from hicache_core.testing.verdicts import describe_mismatch, violated

#: Seeds of the bytes a read target holds before the read (never a stored page's seed).
TARGET_SEED = 7_777_001


def staged_target(pool: object, i: int = 0) -> torch.Tensor:
    """A flat page buffer from ``pool.get_dummy_flat_data_page()``, filled with other bytes."""
    target: torch.Tensor = pool.get_dummy_flat_data_page()  # type: ignore[attr-defined]
    target.view(-1).view(torch.uint8).copy_(random_page(pool, TARGET_SEED + i).view(torch.uint8))
    return target


def got_bytes(prop: str, value: object, what: str) -> bytes:
    if not isinstance(value, torch.Tensor):
        violated(prop, f"{what} returned {type(value).__name__}, not the page (a tensor)")
    return tensor_bytes(value)


def require_page(
    prop: str, value: object, expected: bytes, what: str, others: Mapping[str, bytes] | None = None
) -> None:
    """``value`` (what get returned) must be a tensor holding exactly ``expected``."""
    got = got_bytes(prop, value, what)
    if got != expected:
        violated(prop, f"{what} returned a page that {describe_mismatch(got, expected, others)}")


def require_target_read(
    prop: str, value: object, target: torch.Tensor, expected: bytes, what: str,
    others: Mapping[str, bytes] | None = None,
) -> None:
    """A hit read with ``target_location=target``: the page is in ``target``, and what ``get``
    returned holds it too, in the target's dtype and element count (SGLang's controller
    copies the returned tensor into its pool as a page of the pool's dtype)."""
    if not isinstance(value, torch.Tensor):
        violated(prop, f"{what} returned {type(value).__name__}, not the page (a tensor)")
    if value.dtype != target.dtype or value.numel() != target.numel():
        violated(prop, f"{what} returned a {value.dtype} tensor of {value.numel()} elements for a {target.dtype} "
                       f"target_location of {target.numel()} (return the page as the target's dtype and length, "
                       "best the target itself)")
    require_page(prop, value, expected, what, others)
    held = tensor_bytes(target)
    if held != expected:
        untouched = " (it still holds the bytes it held before the read)" if held != tensor_bytes(value) else ""
        violated(prop, f"{what} returned the page but did not write it into target_location{untouched}: with a "
                       "target, the page must land in the target")


def require_gone(
    prop: str, backend: HiCacheStorage, pool: object, gone: list[str], kept: list[str], after: str
) -> None:
    """Every key in ``gone`` is a miss through each read call; every key in ``kept`` is not."""
    if (each := backend.exists_many(gone + kept)) != [False] * len(gone) + [True] * len(kept):
        violated(prop, f"after {after}, exists_many() of {len(gone)} removed then {len(kept)} kept pages gave {each}")
    for i, key in enumerate(gone):
        if backend.exists(key) is not False:
            violated(prop, f"after {after}, exists() of removed page {i} is not False")
        if (n := backend.batch_exists([key])) != 0:
            violated(prop, f"after {after}, batch_exists() still counts removed page {i} ({n})")
        if backend.get(key, staged_target(pool, i)) is not None:
            violated(prop, f"after {after}, get() still serves removed page {i}")
    if gone:
        values = backend.batch_get(list(gone), [staged_target(pool, i) for i in range(len(gone))])
        if isinstance(values, list) and any(isinstance(v, torch.Tensor) for v in values):
            violated(prop, f"after {after}, batch_get() still serves removed pages")
    if kept and (n := backend.batch_exists(kept)) != len(kept):
        violated(prop, f"after {after}, batch_exists() counts {n} of {len(kept)} pages that were not removed")
