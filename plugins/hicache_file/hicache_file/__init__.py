"""hicache-file: the embedded default L3 backend, one checksummed file per page."""

__version__ = "0.1.0"
