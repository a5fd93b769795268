"""The page-index metadata service: the index itself, and its in-process and HTTP forms."""

from hicache_hf3fs.metadata.base import MetadataUnavailable, PageMetadata
from hicache_hf3fs.metadata.index import Allocation, PageIndex, SlotRef

__all__ = ["Allocation", "MetadataUnavailable", "PageIndex", "PageMetadata", "SlotRef"]
