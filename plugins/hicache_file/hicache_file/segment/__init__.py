"""The ``segment`` scheme of hicache-file: page records in large segment files per namespace,
a journaled index shared by every process, batched vectored I/O. Entry point: ``SegmentStore``."""

from hicache_file.segment.store import SegmentStore

__all__ = ["SegmentStore"]
