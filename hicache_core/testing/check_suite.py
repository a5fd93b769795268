"""The conformance kit against a backend named on the command line (``hicache check``).

Collected only when given explicitly to pytest with ``--hicache-backend NAME`` (and optionally
``--hicache-config JSON``); ``hicache check`` does exactly that. The backend is created with
``create_backend`` (installed or ``dynamic``) and a model name of its own, ``hicache-check``,
so namespaced stores keep these pages apart from real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hicache_core.plugins.factory import create_backend
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.conformance import StorageConformanceTests

CHECK_MODEL_NAME = "hicache-check"


def parse_config(text: str | None) -> dict[str, Any]:
    """Extra config from JSON text, or from a file when the text is ``@path``."""
    if not text:
        return {}
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"the backend config must be a JSON object, got {type(value).__name__}")
    return value


class TestConformance(StorageConformanceTests):
    """The kit, parameterised by ``--hicache-backend`` / ``--hicache-config``."""

    @pytest.fixture
    def check_backend_name(self, request: pytest.FixtureRequest) -> str:
        name = request.config.getoption("--hicache-backend", default=None)
        if not name:
            pytest.skip("no --hicache-backend given (this suite is run by 'hicache check NAME')")
        return str(name)

    @pytest.fixture
    def storage_config(self, request: pytest.FixtureRequest) -> HiCacheStorageConfig:
        extra = parse_config(request.config.getoption("--hicache-config", default=None))
        return HiCacheStorageConfig(model_name=CHECK_MODEL_NAME, extra_config=extra)

    @pytest.fixture
    def open_backend(self, check_backend_name: str) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend(check_backend_name, config)

        return _open
