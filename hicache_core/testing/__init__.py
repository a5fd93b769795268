"""The conformance kit: a base test class every backend author subclasses.

.. code-block:: python

    # tests/test_conformance.py of a backend package
    import pytest
    from hicache_core.testing import StorageConformanceTests

    class TestMyStore(StorageConformanceTests):
        @pytest.fixture
        def open_backend(self, tmp_path, storage_config):
            def _open():
                return MyStore(storage_config_with(tmp_path))
            return _open

``open_backend`` returns a callable that opens the backend on the *same* underlying store
each time it is called (the kit calls it again to test persistence across reopen). The kit
registers the host pool, closes what it opened, and skips what the backend's capabilities
say is absent. ``hicache check NAME`` runs the same suite against an installed backend.

``hicache_core.testing.runner.run_kit(KitTarget(name, open_backend, config))`` runs the whole
kit from code and returns each test's outcome and failure message (what ``hicache check``
prints). ``hicache_core.testing.processes`` starts the services such tests need (a server process on a
free loopback port, waited for until healthy, stopped by PID).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hicache_core.testing.conformance import StorageConformanceTests
    from hicache_core.testing.runner import KitReport, KitTarget, run_kit

__all__ = ["KitReport", "KitTarget", "StorageConformanceTests", "run_kit"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the kit pulls in pytest and torch, which the process helpers
    # (used by ``hicache_core.node.server``) do not need.
    if name == "StorageConformanceTests":
        from hicache_core.testing.conformance import StorageConformanceTests

        return StorageConformanceTests
    if name in ("KitReport", "KitTarget", "run_kit"):
        from hicache_core.testing import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
