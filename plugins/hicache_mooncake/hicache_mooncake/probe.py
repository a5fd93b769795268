"""Cheap checks that say whether Mooncake can run here, without importing it.

Importing ``mooncake.store`` loads a large native library (and, for the CUDA build, CUDA);
``hicache backends`` must stay fast and must not crash on a machine that lacks either, so
these checks look for the files instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

PACKAGE = "mooncake"
LIBIBVERBS = "libibverbs.so.1"
APT_HINT = "apt-get install -y libibverbs1"
PIP_HINT = "pip install hicache-mooncake  (CPU build: mooncake-transfer-engine-non-cuda)"


def libibverbs_reason() -> str | None:
    """None when libibverbs can be loaded, else a sentence with the apt command."""
    try:
        ctypes.CDLL(LIBIBVERBS)
        return None
    except OSError as exc:
        found = ctypes.util.find_library("ibverbs")
        where = f" (find_library found {found!r} but loading failed: {exc})" if found else ""
        return (
            f"Mooncake's transfer engine needs the RDMA verbs library {LIBIBVERBS}, which is not "
            f"installed{where}; run: {APT_HINT}"
        )


def mooncake_package_reason() -> str | None:
    """None when the ``mooncake`` package with its ``store`` extension is installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"the Mooncake Python package is not installed; run: {PIP_HINT}"
    for folder in spec.submodule_search_locations:
        try:
            if any(name.startswith("store") and name.endswith(".so") for name in os.listdir(folder)):
                return None
        except OSError:
            continue
    return (
        "the installed 'mooncake' package has no 'store' extension (another package named "
        f"mooncake?); run: pip uninstall -y mooncake && {PIP_HINT}"
    )


def probe() -> str | None:
    """The discovery probe: None when Mooncake can run here, else why not and what to run."""
    return mooncake_package_reason() or libibverbs_reason()
