"""Hook specifications for hicache plugin modules (pluggy, as pytest uses it).

A first-party plugin's entry point may name a *module* instead of a storage class. That module
implements these hooks with ``@hookimpl`` and must stay light: it must not import the
backend's heavy dependency at module level, because listing backends imports it.

.. code-block:: python

    from hicache_core.plugins import BackendSpec, hookimpl

    @hookimpl
    def hicache_backends():
        return [BackendSpec(name="mystore", target="my_pkg.store:MyStore",
                            install_hint="pip install my-pkg", requires=("my_sdk",))]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from hicache_core.plugins.spec import BackendSpec

PROJECT = "hicache"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hicache_backends() -> list[BackendSpec]:  # type: ignore[empty-body]
    """Return the backends this plugin provides, described without importing them."""
