"""The conformance kit against one target: what ``hicache check`` and ``run_kit`` collect.

The target (a ``runner.KitTarget``) comes from the pytest config's stash, put there by
``runner.run_kit``; run by hand, the suite builds it from ``--hicache-backend NAME`` (and
optionally ``--hicache-config JSON``), creating the backend with ``create_backend`` under the
model name ``hicache-check``, so namespaced stores keep these pages apart from real ones.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.testing.conformance import OpenBackend, StorageConformanceTests
from hicache_core.testing.kit_base import DEFAULT_POOL_SHAPE
from hicache_core.testing.runner import CHECK_MODEL_NAME, TARGET_KEY, KitTarget

__all__ = ["CHECK_MODEL_NAME", "TestConformance", "parse_config"]


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
    """The kit, parameterised by the stashed target or ``--hicache-backend`` / ``--hicache-config``."""

    @pytest.fixture
    def kit_target(self, request: pytest.FixtureRequest) -> KitTarget:
        target = request.config.stash.get(TARGET_KEY, None)
        if target is not None:
            return target
        name = request.config.getoption("--hicache-backend", default=None)
        if not name:
            pytest.skip("no --hicache-backend given (this suite is run by 'hicache check NAME')")
        extra = parse_config(request.config.getoption("--hicache-config", default=None))
        return KitTarget.installed(str(name), extra)

    @pytest.fixture(autouse=True)
    def _writer_from_target(self, kit_target: KitTarget) -> None:
        # Per test instance: how the kill -9 check starts its writer, and the name it spawns.
        self.backend_name = kit_target.backend_name
        self.kill9_writer = kit_target.kill9_writer  # type: ignore[misc]

    @pytest.fixture
    def storage_config(self, kit_target: KitTarget) -> HiCacheStorageConfig:
        return kit_target.storage_config

    @pytest.fixture
    def pool_shape(self, kit_target: KitTarget) -> dict[str, Any]:
        return {**DEFAULT_POOL_SHAPE, **(kit_target.pool_shape or {})}

    @pytest.fixture
    def open_backend(self, kit_target: KitTarget) -> OpenBackend:
        return kit_target.open_backend
