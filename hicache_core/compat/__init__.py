"""Compatibility with code written for SGLang: its storage API and an import shim for it.

See ``sglang_shim`` (how a backend module that imports ``sglang.srt.mem_cache...`` loads
without sglang installed) and ``sglang_api`` (what those imports then give).
"""

from hicache_core.compat.sglang_shim import install, is_installed, real_sglang_available, uninstall

__all__ = ["install", "is_installed", "real_sglang_available", "uninstall"]
