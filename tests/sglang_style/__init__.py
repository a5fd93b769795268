"""Storage backends written the way SGLang 0.5.x backends are, for hicache's compat tests.

Each module is written only from SGLang's storage contract (its method names, arguments and
return conventions, its ``sglang.srt.mem_cache`` imports) and imports nothing from hicache,
so that loading them through ``create_backend("dynamic", ...)`` proves a backend written for
SGLang runs in hicache unchanged. They keep their pages in real files (or SQLite), so two
node processes can share a store.

- ``file_store``: in the manner of SGLang's HiCacheFile (subclasses SGLang's base).
- ``zero_copy_store``: in the manner of SGLang's Mooncake store (plain class, ctypes zero copy).
- ``base_reliant_store``: leans on SGLang's base class (default batch_exists, v1 returning None).
- ``flat_page_store``: v1 through the host pool's flat-page methods, SQLite underneath.

Nothing here is imported by this package's ``__init__``: a module that imports ``sglang`` is
imported only when a test names it, as the dynamic loader would.
"""
