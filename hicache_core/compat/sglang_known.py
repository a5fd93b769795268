"""What hicache knows about SGLang 0.5.23's own storage classes, for running them in hicache.

SGLang's classes declare no ``capabilities``; for the ones listed here hicache states what the
class does (read from its source, each flag exercised by tests/sglang_real), so the
conformance kit runs the checks those capabilities enable instead of skipping them. A class
whose single-page ``get``/``set`` take host-memory pointers (Mooncake's) serves hicache's
flat-page calls through its own zero-copy ``batch_get_v1``/``batch_set_v1`` on a staging page
of the registered host pool (``flat_pages_via_v1``). A class whose v1 read fails a whole batch
for one missing page (NIXL's) is asked which pages exist first (``v1_reads_present_only``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hicache_core.spec.capabilities import Capabilities


@dataclass(frozen=True)
class KnownSGLangClass:
    capabilities: Capabilities
    #: get/set take pointers, not flat tensors: serve flat pages through the class's v1 methods.
    flat_pages_via_v1: bool = False
    #: Its batch_get_v1 fails the whole batch when one page is missing: ask which exist first.
    v1_reads_present_only: bool = False


KNOWN_SGLANG_CLASSES: dict[str, KnownSGLangClass] = {
    # One raw file per page under file_storage_path; MLA ranks share one file per page.
    "sglang.srt.mem_cache.hicache_storage.HiCacheFile": KnownSGLangClass(
        Capabilities(persistent=True, clear=True, mla=True)
    ),
    # Objects in a Mooncake cluster every client of the master sees; zero-copy only; MHA pages
    # need page-contiguous host memory (its layer_first meta does not pair keys with pointers).
    "sglang.srt.mem_cache.storage.mooncake_store.mooncake_store.MooncakeStore": KnownSGLangClass(
        # Flat pages go through its v1 calls, so every page is a KV page: no sidecar pools.
        Capabilities(zero_copy_v1=True, clear=True, shared=True, requires_page_layout=True, mla=True,
                     sidecar_pools=False),
        flat_pages_via_v1=True,
    ),
    # NIXL plugins (POSIX files here); v1 only: its get/set raise "deprecated; use batch_get_v1".
    "sglang.srt.mem_cache.storage.nixl.hicache_nixl.HiCacheNixl": KnownSGLangClass(
        Capabilities(zero_copy_v1=True, clear=True, persistent=True, mla=True, sidecar_pools=False),
        flat_pages_via_v1=True, v1_reads_present_only=True,
    ),
}


def known_sglang_class(cls: type) -> KnownSGLangClass | None:
    """The entry for ``cls`` (SGLang's own class, by module and name), or None."""
    return KNOWN_SGLANG_CLASSES.get(f"{cls.__module__}.{cls.__qualname__}")
