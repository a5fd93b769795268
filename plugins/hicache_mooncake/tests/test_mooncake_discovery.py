"""Discovery: the backend is listed without importing Mooncake, and says why it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hicache_mooncake import probe as probe_mod

HICACHE = [sys.executable, "-m", "hicache_core.cli.main"]


def _backends_json(env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [*HICACHE, "backends", "--json"], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, check=True,
    )
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_listed_with_capabilities_and_options() -> None:
    row = _backends_json()["mooncake"]
    assert row["distribution"] == "hicache-mooncake"
    assert row["source"] == "plugin"
    if probe_mod.probe() is None:
        assert row["status"] == "available", row["reason"]
    caps = set(row["capabilities"])  # type: ignore[arg-type]
    assert {"zero_copy_v1", "shared", "mla"} <= caps and "requires_page_layout" not in caps
    assert "persistent" not in caps
    options = {o["name"]: o for o in row["config_options"]}  # type: ignore[union-attr]
    assert options["master_server_address"]["env"] == "MOONCAKE_MASTER"
    assert options["global_segment_size"]["env"] == "MOONCAKE_GLOBAL_SEGMENT_SIZE"


def test_listing_does_not_import_mooncake() -> None:
    code = (
        "import sys\n"
        "from hicache_core.plugins.registry import default_registry\n"
        "rows = {r.name: r for r in default_registry().describe()}\n"
        "assert 'mooncake' in rows, rows\n"
        "loaded = sorted(m for m in sys.modules if m == 'mooncake' or m.startswith('mooncake.'))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_libibverbs_names_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A soname that does not exist on any machine: the same failure a machine without
    # libibverbs1 gives, through the real loader.
    monkeypatch.setattr(probe_mod, "LIBIBVERBS", "libibverbs.so.999")
    why = probe_mod.libibverbs_reason()
    assert why is not None
    assert "libibverbs.so.999" in why and "apt-get install -y libibverbs1" in why


def test_libibverbs_present_here() -> None:
    if probe_mod.libibverbs_reason() is not None:
        pytest.skip("libibverbs1 is not installed on this machine (apt-get install -y libibverbs1)")
    assert probe_mod.probe() is None


def test_a_foreign_mooncake_package_is_reported(tmp_path: Path) -> None:
    """A different package called 'mooncake' (no store extension) shadows the real one."""
    (tmp_path / "mooncake").mkdir()
    (tmp_path / "mooncake" / "__init__.py").write_text("")
    row = _backends_json({"PYTHONPATH": str(tmp_path)})["mooncake"]
    assert row["status"] == "unavailable"
    assert "no 'store' extension" in str(row["reason"])
    assert "pip" in str(row["reason"])


def test_uninstalled_mooncake_gives_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A package name nothing installs: the same find_spec miss as a machine without Mooncake.
    monkeypatch.setattr(probe_mod, "PACKAGE", "mooncake_not_installed_anywhere")
    why = probe_mod.probe()
    assert why is not None
    assert "not installed" in why and "pip install hicache-mooncake" in why
