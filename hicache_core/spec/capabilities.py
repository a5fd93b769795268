"""What a backend can do, declared by the backend and queried by callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Capabilities:
    """Capability flags of a storage backend.

    A backend sets ``capabilities = Capabilities(...)`` as a class attribute. Callers (the
    controller, the conformance kit, ``hicache backends``) read the flags instead of probing
    with calls that might fail.
    """

    #: Implements ``batch_get_v1``/``batch_set_v1`` natively (reads and writes host-pool
    #: memory without a staging copy). When False, the core's generic path built on
    #: ``get``/``set`` serves those calls.
    zero_copy_v1: bool = False
    #: ``delete(key)`` removes a page.
    delete: bool = False
    #: ``clear()`` removes every page this backend can see.
    clear: bool = False
    #: Pages survive closing the backend and opening it again with the same config.
    persistent: bool = False
    #: Several nodes (processes on different machines) can share one store.
    shared: bool = False
    #: Needs a page-contiguous host-pool layout (``page_first`` or ``page_first_direct``).
    requires_page_layout: bool = False
    #: Supports MLA models (one latent vector per token, single writer rank).
    mla: bool = True
    #: Stores the v2 API's sidecar pools (Mamba/SWA states...) beside KV: pages of another
    #: size than the KV pool's. When False, v2 transfers that need a sidecar are misses.
    sidecar_pools: bool = True

    def names(self) -> list[str]:
        """The names of the flags that are set, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name)]

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)
