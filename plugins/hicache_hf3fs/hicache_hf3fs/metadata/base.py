"""``PageMetadata``: the page-index service of one rank file, as the backend sees it.

Two forms implement it: ``LocalPageMetadata`` (in-process, one process per file) and
``RemotePageMetadata`` (a client of the shared HTTP service, for several ranks and nodes).
Calls on the request path raise ``MetadataUnavailable`` when the service cannot be reached;
the backend turns that into per-page failures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from hicache_core.spec.errors import HiCacheError
from hicache_hf3fs.metadata.index import Allocation, SlotRef


class MetadataUnavailable(HiCacheError):
    """The metadata service did not answer (down, unreachable, timed out)."""


class PageMetadata(ABC):
    """Key -> slot mapping of one rank file (a *namespace*)."""

    #: ``local`` or ``remote``.
    kind: str = ""
    namespace: str = ""

    @abstractmethod
    def initialize(self, num_pages: int, page_bytes: int, write_lease_seconds: float) -> None:
        """Create the namespace, or join it; BackendConfigError when its geometry differs."""

    @abstractmethod
    def allocate(self, keys: Sequence[str], parents: Sequence[str | None]) -> list[Allocation]: ...

    @abstractmethod
    def confirm(self, written: Sequence[SlotRef], aborted: Sequence[SlotRef]) -> list[bool]: ...

    @abstractmethod
    def lookup(self, keys: Sequence[str]) -> list[SlotRef | None]: ...

    @abstractmethod
    def validate(self, refs: Sequence[SlotRef]) -> list[bool]: ...

    @abstractmethod
    def exists(self, keys: Sequence[str]) -> list[bool]: ...

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> int: ...

    @abstractmethod
    def clear(self) -> None: ...

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    def health(self) -> None:
        """Raise MetadataUnavailable when the service cannot serve."""

    def close(self) -> None:
        """Release the connection (remote) or save the index (local, last user)."""
