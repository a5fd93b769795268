"""pytest plugin registered through the ``pytest11`` entry point.

Kept light: it only adds the command-line options ``hicache check`` uses and a ``gpu``
marker; the test classes live in ``hicache_core.testing.conformance``.
"""

from __future__ import annotations

from typing import Any


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("hicache")
    group.addoption("--hicache-backend", default=None, help="backend name for the generic conformance run")
    group.addoption("--hicache-config", default=None, help="extra-config JSON for --hicache-backend")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "conformance: a test of the hicache storage conformance kit")
