"""Plugin module of hicache-nixl: describes the ``nixl`` backend without importing NIXL.

The probe looks at files only (the NIXL wheel and its plugin libraries); it never loads
NIXL's shared libraries, so ``hicache backends`` stays fast.
"""

from __future__ import annotations

import os

from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
from hicache_core.spec.capabilities import Capabilities
from hicache_nixl.runtime import INSTALL_HINT, installed_wheel_modules, plugin_dirs, plugin_library
from hicache_nixl.settings import AUTO_ORDER, NIXL_PLUGIN_NAMES, OPTIONS, PLUGIN_CHOICES

# The file flavour's capabilities (what ``auto`` picks with a stock NIXL wheel); the OBJ
# flavour has no delete/clear and is shared.
CAPABILITIES = Capabilities(
    zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=False,
    requires_page_layout=False, mla=True, sidecar_pools=False,
)

# No defaults here: a declared default would be written into extra-config and hide the
# environment variables; the store applies the defaults (listed in the help text).
CONFIG_OPTIONS = tuple(
    ConfigOption(o.name, None, f"{o.help} (default {o.default!r})" if o.default not in (None, "") else o.help,
                 env=o.envs[0] if o.envs else None)
    for o in OPTIONS
)

#: Libraries the GPU plugins need besides their own; missing ones are named by the probe.
_CUDA_LIBS = ("libcudart.so.12", "libcufile.so.0")


def probe() -> str | None:
    """None when the backend can run here; otherwise exactly what is missing."""
    if not installed_wheel_modules():
        return f"the 'nixl' selector is installed but no NIXL wheel (nixl-cu12, nixl-cu13, nixl-rocm) is; run: {INSTALL_HINT}"
    if not plugin_dirs():
        return "NIXL is installed but its plugin directory is missing; reinstall nixl-cu12 or set NIXL_PLUGIN_DIR"
    wanted = os.environ.get("HICACHE_NIXL_PLUGIN", "auto").strip()
    if wanted.lower() == "auto":
        if not any(plugin_library(NIXL_PLUGIN_NAMES[p]) for p in AUTO_ORDER):
            return f"this NIXL build has none of the storage plugins {', '.join(NIXL_PLUGIN_NAMES.values())}"
        return None
    choice = next((c for c in PLUGIN_CHOICES if c.lower() == wanted.lower()), None)
    if choice is None:
        return f"HICACHE_NIXL_PLUGIN={wanted!r} is not one of {', '.join(PLUGIN_CHOICES)}"
    nixl_name = NIXL_PLUGIN_NAMES[choice]
    if plugin_library(nixl_name) is None:
        return f"HICACHE_NIXL_PLUGIN={choice} but this NIXL build has no libplugin_{nixl_name}.so"
    if choice in ("GDS", "GDS_MT"):
        missing = [lib for lib in _CUDA_LIBS if not _loader_finds(lib)]
        if missing:
            return (f"HICACHE_NIXL_PLUGIN={choice} needs CUDA and cuFile, but the loader finds no "
                    f"{', '.join(missing)} (install the CUDA 12 runtime and GPUDirect Storage)")
    return None


def _loader_finds(soname: str) -> bool:
    """Whether the dynamic loader can resolve ``soname`` (ld.so.cache or LD_LIBRARY_PATH), without loading it."""
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if d and os.path.exists(os.path.join(d, soname)):
            return True
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            return soname.encode() in f.read()
    except OSError:
        return False


@hookimpl
def hicache_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="nixl",
            target="hicache_nixl.store:NixlStore",
            description="NVIDIA NIXL storage plugins (3FS, POSIX, GDS_MT, GDS page files; OBJ S3 objects)",
            install_hint=f"pip install hicache-nixl && {INSTALL_HINT}",
            capabilities=CAPABILITIES,
            config_options=CONFIG_OPTIONS,
            requires=("nixl",),
            probe=probe,
        )
    ]
