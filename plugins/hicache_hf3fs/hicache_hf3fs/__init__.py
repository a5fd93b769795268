"""hicache-hf3fs: the DeepSeek 3FS storage backend for hicache, with a page-index service.

The backend class lives in ``hicache_hf3fs.store`` (imported when the backend is created);
``hicache_hf3fs.plugin`` is the light module the ``hicache.backends`` entry point names.
"""

__version__ = "0.1.0"
