"""Host (L2) memory that KV pages live in between the device and storage."""

from hicache_core.memory.host_pool import LAYOUTS, HostKVPool, PagePiece

__all__ = ["LAYOUTS", "HostKVPool", "PagePiece"]
