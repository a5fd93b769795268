"""Finding, describing and creating storage backends.

- ``hookspecs``: the pluggy hooks a plugin module implements (pytest style).
- ``spec``: ``BackendSpec``, what a plugin says about a backend without importing it.
- ``known``: first-party backends and their install hints (fsspec's known implementations).
- ``registry``: entry-point discovery, the ``HICACHE_PLUGINS`` allowlist, safe availability.
- ``dynamic``: SGLang's ``dynamic`` backend (module path + class name from extra-config).
- ``adapter``: makes a duck-typed (SGLang-written) class a full ``HiCacheStorage``.
- ``factory``: the one path that creates every backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicache_core.lazy import lazy_exports

if TYPE_CHECKING:
    from hicache_core.plugins.factory import create_backend, resolve_backend_class
    from hicache_core.plugins.hookspecs import hookimpl
    from hicache_core.plugins.registry import BackendInfo, BackendRegistry, default_registry
    from hicache_core.plugins.spec import BackendSpec, ConfigOption

#: Public names and the modules that define them, imported on first use (PEP 562), so that
#: importing the package (the ``hicache`` CLI, plugin modules) does not import torch.
_EXPORTS: dict[str, str] = {
    "create_backend": "hicache_core.plugins.factory",
    "resolve_backend_class": "hicache_core.plugins.factory",
    "hookimpl": "hicache_core.plugins.hookspecs",
    "BackendInfo": "hicache_core.plugins.registry",
    "BackendRegistry": "hicache_core.plugins.registry",
    "default_registry": "hicache_core.plugins.registry",
    "BackendSpec": "hicache_core.plugins.spec",
    "ConfigOption": "hicache_core.plugins.spec",
}

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



__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
