"""Finding, describing and creating storage backends.

- ``hookspecs``: the pluggy hooks a plugin module implements (pytest style).
- ``spec``: ``BackendSpec``, what a plugin says about a backend without importing it.
- ``known``: first-party backends and their install hints (fsspec's known implementations).
- ``registry``: entry-point discovery, the ``HICACHE_PLUGINS`` allowlist, safe availability.
- ``dynamic``: SGLang's ``dynamic`` backend (module path + class name from extra-config).
- ``adapter``: makes a duck-typed (SGLang-written) class a full ``HiCacheStorage``.
- ``factory``: the one path that creates every backend.
"""

from hicache_core.plugins.factory import create_backend, resolve_backend_class
from hicache_core.plugins.hookspecs import hookimpl
from hicache_core.plugins.registry import BackendInfo, BackendRegistry, default_registry
from hicache_core.plugins.spec import BackendSpec, ConfigOption

__all__ = [
    "BackendInfo",
    "BackendRegistry",
    "BackendSpec",
    "ConfigOption",
    "create_backend",
    "default_registry",
    "hookimpl",
    "resolve_backend_class",
]
