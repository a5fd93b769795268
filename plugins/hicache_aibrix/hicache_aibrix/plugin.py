"""Entry point of the AIBrix backend: describes it without importing AIBrix."""

from __future__ import annotations

import importlib.util

from hicache_aibrix.settings import OWN_KEYS, SETTINGS
from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
from hicache_core.spec.capabilities import Capabilities

INSTALL_HINT = "pip install hicache-aibrix  (brings aibrix-kvcache; install torch first)"


def probe() -> str | None:
    """None when AIBrix's cache manager can run here (it needs rocksdict and uvloop too)."""
    for module in ("aibrix_kvcache", "uvloop", "rocksdict", "farmhash"):
        if importlib.util.find_spec(module) is None:
            return f"Python module {module!r} is missing; {INSTALL_HINT}"
    return None


@hookimpl
def hicache_backends() -> list[BackendSpec]:
    options = [ConfigOption(name=s.key, default=None, help=s.help, env=s.env) for s in SETTINGS]
    options += [ConfigOption(name=key, default=None, help=text) for key, text in OWN_KEYS.items()]
    return [
        BackendSpec(
            name="aibrix",
            target="hicache_aibrix.store:AIBrixStore",
            description="AIBrix KV cache: in-memory L1 with RocksDB, shared-file or remote L2 connectors",
            install_hint=INSTALL_HINT,
            # Per instance, persistent/shared follow the chosen connector (ROCKSDB, SHFS, remote).
            capabilities=Capabilities(
                zero_copy_v1=True, delete=True, clear=False, persistent=False, shared=False,
                requires_page_layout=False, mla=False, sidecar_pools=False,
            ),
            config_options=tuple(options),
            requires=("aibrix_kvcache",),
            probe=probe,
            docs_url="https://aibrix.readthedocs.io/",
        )
    ]
