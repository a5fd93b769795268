"""The real sglang package in hicache's tests: is it here, and making its modules import on CPU.

``scripts/setup.sh --sglang`` (also ``--all --dev``) installs ``sglang==0.5.23`` with its
runtime imports on a CPU machine, torch kept at its CPU build. Tests of the real package call
``require_sglang()`` (skip, saying why, only when sglang is not installed) and then import
sglang's modules themselves.

THE ONE STAND-IN: ``import_stand_ins/torchvision`` is an IMPORT-ONLY stand-in for torchvision,
not torchvision (see its docstring). SGLang's ``pool_host``, ``memory_pool`` and
``managers.cache_controller`` modules import ``sglang.srt.configs``, which reaches two modules
that import ``torchvision.transforms`` at module level to name things; torchvision from the
registry is a CUDA build that cannot import against CPU torch. ``prepare()`` first asks
transformers whether torchvision is available (it is not; transformers caches the answer, so
its image code never touches the stand-in), then puts the stand-in's folder on ``sys.path``.
``sglang.srt.mem_cache.hicache_storage`` and ``storage.backend_factory`` import without it.
Nothing else about SGLang is replaced: every class these tests use is SGLang's own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest

SGLANG_VERSION = "0.5.23"
STAND_IN_DIR = Path(__file__).resolve().parent / "import_stand_ins"
INSTALL_HINT = "bash scripts/setup.sh --sglang (installs sglang==0.5.23 on CPU)"
#: hicache's first-party backends, as ``hicache backends`` lists them.
FIRST_PARTY = ("file", "mooncake", "nixl", "hf3fs", "aibrix")

_prepared = False


def sglang_missing_reason() -> str | None:
    """Why the real sglang cannot be tested here, or None when it can."""
    if importlib.util.find_spec("sglang") is None:
        return f"sglang is not installed; {INSTALL_HINT}"
    try:
        version = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return f"an 'sglang' module is importable but no sglang distribution is installed; {INSTALL_HINT}"
    if version != SGLANG_VERSION:
        return f"sglang {version} is installed; these tests are written against {SGLANG_VERSION}: {INSTALL_HINT}"
    return None


def stand_in_needed() -> bool:
    """True when no torchvision is importable (the stand-in only fills that gap)."""
    spec = importlib.util.find_spec("torchvision")
    return spec is None or str(STAND_IN_DIR) in str(spec.origin or "")


def prepare() -> None:
    """Make SGLang's storage, host-pool and controller modules importable here (idempotent)."""
    global _prepared
    if _prepared:
        return
    if stand_in_needed() and str(STAND_IN_DIR) not in sys.path:
        # Order matters: transformers must settle "no torchvision" before the stand-in exists.
        from transformers.utils import import_utils

        if import_utils.is_torchvision_available():
            raise RuntimeError(
                "transformers already decided torchvision is available before the stand-in was "
                "placed; import sglang_env.prepare() before anything imports transformers' image code"
            )
        sys.path.insert(0, str(STAND_IN_DIR))
    _prepared = True


def require_sglang() -> None:
    """Skip the calling test (or module, at import) when sglang is not installed; else prepare."""
    reason = sglang_missing_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
    prepare()

