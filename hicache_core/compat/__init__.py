"""hicache and SGLang, both ways.

- ``sglang_bridge``: ``HiCacheBridge``, any hicache backend as an SGLang storage backend through
  SGLang's own ``dynamic`` loader (docs/sglang-compat.md, recipe 1).
- ``sglang_pool``: SGLang's host pools with hicache's page API (``hicache_core.memory.pages``).
- ``sglang_known``: what hicache knows about SGLang's own storage classes, to run them in hicache.
- ``sglang_shim`` / ``sglang_api``: without sglang installed, modules written against SGLang's
  storage classes still import (the shim serves ``sglang.srt.mem_cache...``).
"""

from hicache_core.compat.sglang_shim import install, is_installed, real_sglang_available, uninstall

__all__ = ["install", "is_installed", "real_sglang_available", "uninstall"]
