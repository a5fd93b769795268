"""Where NIXL lives on this machine and why one of its plugins will not load.

Kept free of ``import nixl`` at module level: ``plugin.py`` uses the file-level checks here
to explain availability without loading NIXL's shared libraries.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

from hicache_core.spec.errors import BackendLoadError

#: The wheels that carry NIXL's compiled code; the ``nixl`` package is a thin selector.
WHEEL_MODULES = ("nixl_cu13", "nixl_cu12", "nixl_rocm")
INSTALL_HINT = "pip install nixl-cu12 && pip install --no-deps nixl"


def installed_wheel_modules() -> list[str]:
    """The NIXL wheel modules that are installed (found without importing them)."""
    found = []
    for name in WHEEL_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return found


def plugin_dirs() -> list[Path]:
    """Directories NIXL loads ``libplugin_<NAME>.so`` from, most specific first."""
    dirs: list[Path] = []
    override = os.environ.get("NIXL_PLUGIN_DIR")
    if override:
        dirs.append(Path(override))
    for name in installed_wheel_modules():
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for loc in locations:
            # meson-python wheels keep the plugins beside the package in a hidden folder.
            dirs.append(Path(loc).parent / f".{name}.mesonpy.libs" / "plugins")
    return [d for d in dirs if d.is_dir()]


def plugin_library(nixl_name: str) -> Path | None:
    """The shared library of a NIXL plugin, or None when this NIXL build has none."""
    for d in plugin_dirs():
        candidate = d / f"libplugin_{nixl_name}.so"
        if candidate.is_file():
            return candidate
    return None


def library_load_error(nixl_name: str) -> str:
    """Why the plugin's shared library does not load (the dynamic loader's message), or ''."""
    lib = plugin_library(nixl_name)
    if lib is None:
        where = ", ".join(str(d) for d in plugin_dirs()) or "no plugin directory found"
        return f"this NIXL build has no libplugin_{nixl_name}.so ({where})"
    try:
        ctypes.CDLL(str(lib), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    except OSError as exc:
        return f"{lib.name} does not load: {exc}"
    return ""


def import_nixl_api() -> ModuleType:
    """``nixl._api`` (through the ``nixl`` selector, else straight from an installed wheel)."""
    errors = []
    for name in ("nixl._api", *(f"{m}._api" for m in installed_wheel_modules())):
        try:
            return importlib.import_module(name)
        except Exception as exc:  # a wheel that fails to load must not hide the others
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    detail = "; ".join(errors) or "no NIXL wheel (nixl-cu12, nixl-cu13, nixl-rocm) is installed"
    raise BackendLoadError(f"nixl: NIXL cannot be imported ({detail}); install it with: {INSTALL_HINT}")
