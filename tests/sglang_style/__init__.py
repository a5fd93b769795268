"""Two third-party backends written against SGLang 0.5.x's storage API, for the shim tests.

They are not SGLang's classes and do not stand in for them (SGLang's own ``HiCacheFile`` and
``MooncakeStore`` are tested for real in ``tests/sglang_real``). They are what an author writes
for SGLang: modules that import ``sglang.srt.mem_cache.hicache_storage`` and subclass its
``HiCacheStorage``, importing nothing from hicache. ``tests/test_sglang_compat.py`` loads them
with sglang hidden, to prove hicache's import shim lets such a module load and run without
sglang installed, and with the real sglang, to prove the real package always wins.

- ``file_store``: subclasses SGLang's base, one file per page.
- ``base_reliant_store``: leans on SGLang's base class (default batch_exists, v1 returning None).

Nothing here is imported by this package's ``__init__``: a module that imports ``sglang`` is
imported only when a test names it, as the dynamic loader would.
"""
