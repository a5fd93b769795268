"""An example third-party hicache backend: pages as rows of a sqlite3 database."""

__version__ = "0.1.0"
