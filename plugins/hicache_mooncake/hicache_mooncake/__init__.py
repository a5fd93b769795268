"""hicache-mooncake: Mooncake Store as the distributed L3 of hicache.

Importing this package does not import Mooncake; ``hicache_mooncake.store`` does.
"""

from __future__ import annotations

__version__ = "0.1.0"
BACKEND_NAME = "mooncake"

__all__ = ["BACKEND_NAME", "__version__"]
