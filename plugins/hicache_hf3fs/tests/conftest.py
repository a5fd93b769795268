"""Fixtures of the hf3fs tests: a real metadata service process, stopped by PID at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hf3fs_testutil import ServiceProcess, start_metadata_service


@pytest.fixture(scope="session")
def metadata_service() -> Iterator[ServiceProcess]:
    """One shared metadata service on 127.0.0.1 for the session (tests use distinct files)."""
    service = start_metadata_service()
    yield service
    service.stop()


@pytest.fixture
def fresh_metadata_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A metadata service of this test alone, saving its state to a file at shutdown."""
    state = tmp_path_factory.mktemp("hf3fs-state") / "state.json"
    service = start_metadata_service(str(state))
    yield service
    service.stop()
