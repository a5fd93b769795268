"""Shared helpers of the node tests: in-process nodes and node processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hicache_core.node import Node, NodeConfig

TESTS_DIR = Path(__file__).resolve().parent

# Page-sized tensor ops are fastest single-threaded on this shared 2-core machine.
torch.set_num_threads(1)


def dir_store(path: Path | str) -> dict[str, Any]:
    """Extra config of the ``dynamic`` DirStore test backend rooted at ``path``."""
    return {"backend_name": "dirstore", "module_path": "_node_backends", "class_name": "DirStore",
            "interface_v1": 0, "path": str(path)}


def small_node(**kw: Any) -> Node:
    """A tiny-model node with small tiers (pages of 16 tokens) unless overridden."""
    defaults: dict[str, Any] = {"page_size": 16, "device_capacity_tokens": 16 * 8, "hicache_ratio": 2.0}
    defaults.update(kw)
    return Node(NodeConfig(**defaults))


def child_env() -> dict[str, str]:
    """Environment for a node process: the tests dir importable and allowed for the dynamic
    backend over HTTP (``HICACHE_DYNAMIC_ALLOWLIST``; by default only installed backends')."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{path}" if path else str(TESTS_DIR),
            "HICACHE_DYNAMIC_ALLOWLIST": "_node_backends"}
