"""``hicache check``: the conformance kit from the command line, exit 0 only when it conforms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

BROKEN_STORE = """
import torch
from hicache_core import HiCacheStorage

class ForgetfulStore(HiCacheStorage):
    '''Says it stored a page, then never finds it.'''
    def get(self, key, target_location=None, target_sizes=None):
        return None
    def set(self, key, value=None, target_location=None, target_sizes=None):
        return True
    def exists(self, key):
        return False
"""


def hicache(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HICACHE_PLUGINS", "HICACHE_DYNAMIC_ALLOWLIST")}
    env["COLUMNS"] = "200"
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "hicache_core.cli.main", *args], capture_output=True, text=True, timeout=300, env=env,
    )


def test_file_backend_conforms(tmp_path: Path) -> None:
    config = tmp_path / "file.json"
    config.write_text(json.dumps({"path": str(tmp_path / "l3")}))
    result = hicache("check", "file", "--config", f"@{config}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "file conforms" in result.stdout
    for test in ("test_v1_roundtrip[layer_first]", "test_persistent_across_reopen", "test_concurrent_threads"):
        assert test in result.stdout
    assert list((tmp_path / "l3").glob("*hicache-check*")), "the check wrote under its own model name"


def test_a_broken_backend_fails_with_the_failing_tests_named(tmp_path: Path) -> None:
    (tmp_path / "forgetful_store.py").write_text(textwrap.dedent(BROKEN_STORE))
    config = {"backend_name": "forgetful", "module_path": "forgetful_store", "class_name": "ForgetfulStore"}
    result = hicache("check", "dynamic", "--config", json.dumps(config), "-k", "roundtrip or miss", pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not conform" in result.stdout
    assert "test_set_get_roundtrip" in result.stdout and "failed" in result.stdout
    assert "test_miss" in result.stdout and "passed" in result.stdout
    assert "test_concurrent_threads" not in result.stdout, "-k limits the run"


def test_backend_that_cannot_start_exits_2() -> None:
    result = hicache("check", "no-such-backend")
    assert result.returncode == 2
    assert "cannot start" in result.stdout and "unknown storage backend" in result.stdout


def test_bad_config_exits_2() -> None:
    result = hicache("check", "file", "--config", "{not json")
    assert result.returncode == 2 and "--config" in result.stdout
    result = hicache("check", "file", "--config", "[1, 2]")
    assert result.returncode == 2 and "JSON object" in result.stdout
