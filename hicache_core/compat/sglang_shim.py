"""An import shim that lets backend modules written for SGLang import without SGLang.

A backend written for sglang 0.5.x usually starts with
``from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig`` and
perhaps ``from sglang.srt.mem_cache.memory_pool_host import HostKVCache``. hicache does not
need (or install) sglang, so the dynamic loader calls ``install()`` when such an import fails
because ``sglang`` is missing, then imports the backend again.

How it works: ``install()`` appends a meta-path finder to the END of ``sys.meta_path``. Python
asks the finders in order, so the shim answers only for names no other finder knows: a real
sglang anywhere on the path always wins, and ``install()`` refuses to install at all when one
is importable. The finder serves exactly these modules, whose contents come from
``hicache_core.compat.sglang_api``:

- ``sglang``, ``sglang.srt``, ``sglang.srt.mem_cache`` (empty packages)
- ``sglang.srt.mem_cache.hicache_storage``: ``HiCacheStorage`` (SGLang's base on hicache's
  ABC), ``HiCacheStorageConfig``, ``HiCacheStorageExtraInfo``, ``get_hash_str``
- ``sglang.srt.mem_cache.memory_pool_host``: ``HostKVCache``, ``MHATokenToKVPoolHost``,
  ``MLATokenToKVPoolHost``

Any other ``sglang.*`` import still fails. ``uninstall()`` removes the finder and the shim's
modules from ``sys.modules`` (modules already imported keep what they imported). Set
``HICACHE_SGLANG_SHIM=0`` to never install it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

SHIM_ENV = "HICACHE_SGLANG_SHIM"
SHIM_ORIGIN = "hicache-sglang-shim"

#: Shim module name -> names it exports from ``sglang_api`` (empty: a bare package).
_PACKAGES: tuple[str, ...] = ("sglang", "sglang.srt", "sglang.srt.mem_cache")


def _exports() -> dict[str, tuple[str, ...]]:
    from hicache_core.compat import sglang_api

    return {
        "sglang.srt.mem_cache.hicache_storage": sglang_api.HICACHE_STORAGE_NAMES,
        "sglang.srt.mem_cache.memory_pool_host": sglang_api.MEMORY_POOL_HOST_NAMES,
    }


def provided_modules() -> tuple[str, ...]:
    """Every module name the shim serves."""
    return (*_PACKAGES, *_exports())


class _ShimLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        from hicache_core.compat import sglang_api

        names = _exports().get(module.__name__, ())
        for name in names:
            setattr(module, name, getattr(sglang_api, name))
        module.__doc__ = (
            f"hicache's stand-in for {module.__name__} (sglang is not installed); "
            "see hicache_core.compat.sglang_shim"
        )
        module.__dict__["__all__"] = list(names)


class SGLangShimFinder(importlib.abc.MetaPathFinder):
    """Serves the shim modules; placed last on ``sys.meta_path`` so real modules win."""

    def __init__(self) -> None:
        self.loader = _ShimLoader()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "sglang" and not fullname.startswith("sglang."):
            return None
        if fullname not in provided_modules():
            return None
        top = sys.modules.get("sglang")
        if fullname != "sglang" and top is not None and not is_shim_module(top):
            return None  # a real sglang is loaded: never mix the two
        is_package = fullname in _PACKAGES
        spec = importlib.machinery.ModuleSpec(fullname, self.loader, origin=SHIM_ORIGIN, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = []  # children come from this finder only
        return spec

    def invalidate_caches(self) -> None:
        return None


_lock = threading.Lock()
_finder: SGLangShimFinder | None = None


def is_shim_module(module: Any) -> bool:
    """True when ``module`` was created by the shim."""
    spec = getattr(module, "__spec__", None)
    return spec is not None and getattr(spec, "origin", None) == SHIM_ORIGIN


def is_installed() -> bool:
    return _finder is not None and _finder in sys.meta_path


def shim_disabled(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(SHIM_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def real_sglang_available() -> bool:
    """True when a real ``sglang`` is imported or importable (asked without the shim).

    Asks the finders in import order, as ``import sglang`` would: the first one that finds it
    says yes; one that refuses it with ``ModuleNotFoundError`` before any found it says no.
    """
    loaded = sys.modules.get("sglang")
    if loaded is not None:
        return not is_shim_module(loaded)
    for finder in list(sys.meta_path):
        if isinstance(finder, SGLangShimFinder):
            continue
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            if find("sglang", None) is not None:
                return True
        except ModuleNotFoundError:
            return False  # refused before any finder found it: "import sglang" fails too
        except Exception:  # a broken finder is not an sglang
            continue
    return False


def install(reason: str = "") -> bool:
    """Put the shim in place; True when it is in place after the call.

    Does nothing (returns False) when a real sglang is importable or ``HICACHE_SGLANG_SHIM=0``.
    """
    global _finder
    with _lock:
        if is_installed():
            return True
        if shim_disabled():
            log.info("sglang shim disabled by %s=0", SHIM_ENV)
            return False
        if real_sglang_available():
            return False
        _finder = SGLangShimFinder()
        sys.meta_path.append(_finder)
    log.info(
        "sglang is not installed%s: serving %s from hicache's SGLang shim "
        "(hicache_core.compat.sglang_shim; install sglang to use the real modules, "
        "%s=0 to disable)",
        f" ({reason})" if reason else "", ", ".join(_exports()), SHIM_ENV,
    )
    return True


def uninstall() -> None:
    """Remove the finder and the shim's modules from ``sys.modules``."""
    global _finder
    with _lock:
        while _finder is not None and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None
        for name in provided_modules():
            mod = sys.modules.get(name)
            if mod is not None and is_shim_module(mod):
                del sys.modules[name]


def missing_sglang_module(exc: BaseException | None) -> str | None:
    """The ``sglang...`` module name whose absence caused ``exc`` (walking its causes), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError):
            name = exc.name or ""
            if name == "sglang" or name.startswith("sglang."):
                return name
        exc = exc.__cause__ or exc.__context__
    return None
