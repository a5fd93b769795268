"""``StorageConformanceTests``: the behaviour every hicache storage backend must show.

Modelled on zarr's ``StoreTests``: a backend author subclasses it and overrides fixtures.

Fixtures to override (all optional but one of the first two):

- ``backend_name`` (class attribute): an installed backend name; the default
  ``open_backend`` then uses ``hicache_core.create_backend``.
- ``open_backend``: a callable ``(config) -> HiCacheStorage`` that opens the backend with
  exactly that config, on the *same* underlying store every time it is called (the kit opens
  several instances at once, and one in a forked writer process that it kills with SIGKILL).
- ``storage_config``: the ``HiCacheStorageConfig`` (put backend keys in ``extra_config``).
- ``pool_shape``: the host pool's shape (``page_size``, ``layer_num``, ``head_num``,
  ``head_dim``, ``dtype``, ``pages``).

The checks, by concern (each module's docstring says what it proves):

- ``kit_contract``: single-key and batch API, overwrite, delete/clear (also after reopen or from
  a second instance), threads started together with bytes checked on every read, 1 MiB pages.
- ``kit_zero_copy``: v1 round trips in every layout (MHA and MLA), scattered host indices; a
  set leaves the host pool as it was, a get writes only the pages it reports as hits.
- ``kit_reads`` (helpers): read targets pre-filled with other bytes, so a hit that writes
  nothing fails; a ``get`` with a target must land in it, with its dtype and length; a removed
  page is a miss through every call.
- ``kit_paths``: one page, every path (v1 <-> tensor) and every layout (same KV or a miss).
- ``kit_namespace``: namespace isolation (model, tp rank/size, pp, attention cp, dtype, layout,
  geometry) and odd keys (long keys differing past 1,024 characters, case, Unicode forms, path
  pieces such as ``..`` and ``//``, NUL, spaces, ``@``).
- ``kit_durability``: persistence after reopen and after ``kill -9`` of a writer process.
- ``v2_checks``: the v2 pool transfers (KV + a Mamba-like state pool, hit policies).

Each failure starts with the broken property in words. Tests that need a capability the
backend does not declare are skipped, saying which one. Keys are unique per test run so a
shared store (a Mooncake cluster, a bucket) can be reused.
"""

from __future__ import annotations

from hicache_core.testing.kit_base import OpenBackend
from hicache_core.testing.kit_contract import ContractChecks
from hicache_core.testing.kit_durability import DurabilityChecks
from hicache_core.testing.kit_namespace import NamespaceChecks
from hicache_core.testing.kit_paths import PathChecks
from hicache_core.testing.kit_zero_copy import ZeroCopyChecks
from hicache_core.testing.v2_checks import V2PoolTransferChecks

__all__ = ["OpenBackend", "StorageConformanceTests"]


class StorageConformanceTests(
    V2PoolTransferChecks, DurabilityChecks, NamespaceChecks, PathChecks, ZeroCopyChecks, ContractChecks
):
    """Subclass me; see the module docstring for the fixtures to override.

    (Bases in reverse: pytest collects the last base's checks first, the contract's basics.)
    """
