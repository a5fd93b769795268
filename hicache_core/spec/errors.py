"""Exceptions the core raises. Each message says what is wrong and what to do about it."""

from __future__ import annotations


class HiCacheError(Exception):
    """Base class of every error hicache raises on purpose."""


class BackendNotFoundError(HiCacheError, LookupError):
    """No installed plugin provides the requested backend name."""


class BackendLoadError(HiCacheError, ImportError):
    """A backend's code could not be imported or is not a storage backend."""


class BackendConfigError(HiCacheError, ValueError):
    """A backend's configuration is missing a key or holds a bad value."""


class ContractVersionError(HiCacheError):
    """A backend was written for a storage-contract major version this core does not speak."""


class LayoutError(HiCacheError, ValueError):
    """A backend cannot work with the host pool's memory layout."""
