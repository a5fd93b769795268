"""Host (L2) memory that KV pages live in between the device and storage."""

from hicache_core.memory.host_pool import LAYOUTS, HostKVPool
from hicache_core.memory.pages import PageFormat, PageGeometry, PagePiece, page_format, page_geometry

__all__ = ["LAYOUTS", "HostKVPool", "PageFormat", "PageGeometry", "PagePiece", "page_format", "page_geometry"]
