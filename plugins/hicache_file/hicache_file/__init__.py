"""hicache-file: the embedded default L3 backend on local files (schemes: see ``hicache_file.store``)."""

__version__ = "0.1.0"
