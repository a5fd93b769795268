"""``hicache backends``: the table and the ``--json`` fields, from the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from hicache_core.cli.main import main
from hicache_core.plugins import registry as registry_module
from hicache_core.plugins.registry import ENTRY_POINT_GROUP, BackendRegistry

REQUIRED_FIELDS = {"name", "status", "distribution", "version", "reason"}


def hicache(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "HICACHE_PLUGINS"}  # a caller's allowlist must not leak in
    return subprocess.run(
        [sys.executable, "-m", "hicache_core.cli.main", *args], capture_output=True, text=True, timeout=120,
        env={**base, "COLUMNS": "200", **env},
    )


def test_json_lists_every_backend_with_the_required_fields() -> None:
    result = hicache("backends", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert REQUIRED_FIELDS <= set(row), row
        assert row["status"] in ("available", "unavailable", "not installed")
        if row["status"] == "not installed":
            assert row["reason"].endswith(f"pip install {row['distribution']}")
        if row["status"] == "unavailable":
            assert row["reason"], "an unavailable backend says why"
    by_name = {r["name"]: r for r in rows}
    assert by_name["file"]["status"] == "available" and by_name["file"]["distribution"] == "hicache-file"
    assert by_name["dynamic"]["distribution"] == "hicache-core"
    assert rows[0]["name"] == "file", "the embedded default is listed first"


def test_allowlist_from_the_environment(tmp_path: object) -> None:
    result = hicache("backends", "--json", HICACHE_PLUGINS="")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["file"]["status"] == "unavailable" and "HICACHE_PLUGINS" in rows["file"]["reason"]


@pytest.fixture
def only_file_installed(monkeypatch: pytest.MonkeyPatch) -> BackendRegistry:
    """The default registry as if hicache-file were the only plugin installed."""
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "file"]
    registry = BackendRegistry(entry_points_override=eps, environ={})
    monkeypatch.setattr(registry_module, "_default", registry)
    return registry


def test_not_installed_first_party_backends_show_the_install_hint(
    only_file_installed: BackendRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("mooncake", "nixl", "hf3fs", "aibrix"):
        assert rows[name]["status"] == "not installed"
        assert rows[name]["distribution"] == f"hicache-{name}" and rows[name]["version"] is None
        assert rows[name]["install_hint"] == f"pip install hicache-{name}"
    assert rows["file"]["status"] == "available" and rows["file"]["version"]
    assert "zero_copy_v1" in rows["file"]["capabilities"]


def test_table_output(only_file_installed: BackendRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "hicache storage backends" in out
    for text in ("file", "hicache-file", "available", "not installed", "pip install hicache-mooncake", "dynamic"):
        assert text in out


def test_json_deep_shows_each_backends_config_schema() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "backends", "--json", "--deep"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    file_schema = rows["file"]["config_schema"]
    assert {"path", "scheme", "max_bytes"} <= set(file_schema["properties"])  # from FileStore.config_model
    assert file_schema.get("additionalProperties") is False
    if rows.get("nixl", {}).get("status") == "available":  # from the plugin's declared options
        assert "storage_dir" in rows["nixl"]["config_schema"]["properties"]


def test_table_fits_80_columns_without_wrapping_names() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "backends"], capture_output=True,
                         text=True, timeout=120, check=True, env=env).stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    names = {line.split("│")[1].strip() for line in lines if line.startswith("│") and line.split("│")[1].strip()}
    assert {"file", "mooncake", "dynamic"} <= names, names  # whole, never "moonca" / "ke"
