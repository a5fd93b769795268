"""hicache-aibrix: the AIBrix KV cache (in-memory L1 plus RocksDB, files or a remote L2) as a hicache L3 backend.

The storage class is ``hicache_aibrix.store:AIBrixStore``; importing this package does not
import AIBrix.
"""

__version__ = "0.1.0"
