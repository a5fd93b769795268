"""hicache-nixl: hicache's ``nixl`` L3 backend on NVIDIA NIXL storage plugins.

Importing this package does not import NIXL; ``hicache_nixl.store`` does, lazily, when a
backend is created.
"""

__version__ = "0.1.0"
