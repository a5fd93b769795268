"""Command-line flags of a node (``hicache serve``, in-process ``hicache replay``, ``hicache demo``).

Where SGLang has a flag for the same thing the name and meaning are SGLang's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hicache_core.controller import PREFETCH_POLICIES, WRITE_POLICIES
from hicache_core.memory.host_pool import LAYOUTS
from hicache_core.node.node import DEFAULT_NODE_PREFETCH_POLICY, NodeConfig
from hicache_core.node.presets import DTYPES, PRESETS, resolve_shape


def parse_json_or_file(raw: str | None, flag: str = "--hicache-storage-backend-extra-config") -> dict[str, Any]:
    """A JSON object given inline or as ``@path``; errors say which flag and what is wrong."""
    if raw is None or raw.strip() == "":
        return {}
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        if not path.is_file():
            raise ValueError(f"{flag}: file {path} does not exist")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not valid JSON ({exc}); give a JSON object or @file.json") from None
    if not isinstance(value, dict):
        raise ValueError(f'{flag}: must be a JSON object, e.g. \'{{"path": "/tmp/hicache"}}\'')
    return value


def add_node_arguments(p: argparse.ArgumentParser, with_backend: bool = True) -> None:
    g = p.add_argument_group("model shape (the KV of one rank)")
    g.add_argument("--model-preset", default="tiny", choices=sorted(PRESETS),
                   help="named KV shape; tiny (16 B/token) lets a whole trace fit in laptop memory (default tiny)")
    g.add_argument("--num-layers", type=int, help="override the preset's layer count")
    g.add_argument("--num-kv-heads", type=int, help="override the preset's KV heads (MHA)")
    g.add_argument("--head-dim", type=int, help="override the preset's head dim (MLA: the latent width)")
    g.add_argument("--kv-dtype", choices=sorted(DTYPES), help="override the preset's KV dtype")
    g.add_argument("--mla", action=argparse.BooleanOptionalAction, default=None,
                   help="MLA (one latent per token, written by rank 0 only) instead of MHA")

    g = p.add_argument_group("tiers")
    g.add_argument("--page-size", type=int, default=64, help="tokens per page (SGLang --page-size; default 64)")
    g.add_argument("--device", default="auto", help="L1 device: auto (CUDA when present, else CPU), cpu, cuda[:N]")
    g.add_argument("--device-capacity-tokens", type=int, default=256 * 1024,
                   help="L1 size in tokens per rank (default 262144)")
    g.add_argument("--host-capacity-tokens", type=int,
                   help="L2 size in tokens per rank (overrides --hicache-size and --hicache-ratio)")
    g.add_argument("--hicache-ratio", type=float, default=2.0,
                   help="L2 size as a multiple of L1 (SGLang --hicache-ratio; default 2.0)")
    g.add_argument("--hicache-size", type=float, default=0.0,
                   help="L2 size in GB per rank; overrides the ratio when > 0 (SGLang --hicache-size)")
    g.add_argument("--hicache-mem-layout", default="page_first", choices=LAYOUTS,
                   help="host pool layout (SGLang --hicache-mem-layout; default page_first)")
    g.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads (default 1: page-sized tensor ops are fastest single-threaded, "
                        "and ranks already run in parallel)")
    g.add_argument("--dp-size", type=int, default=1,
                   help="data-parallel ranks, each with its own L1, L2 and controller (SGLang --dp-size)")

    g = p.add_argument_group("L3 storage")
    if with_backend:
        g.add_argument("--hicache-storage-backend",
                       help="backend to attach at start (e.g. file); none = L2 only, attach later over HTTP")
        g.add_argument("--hicache-storage-backend-extra-config",
                       help="backend config: a JSON object or @file.json (SGLang's flag)")
    g.add_argument("--hicache-storage-prefetch-policy", default=DEFAULT_NODE_PREFETCH_POLICY,
                   choices=PREFETCH_POLICIES,
                   help=f"L3 prefetch stop policy (SGLang's; default {DEFAULT_NODE_PREFETCH_POLICY}: the node has "
                        "no compute to overlap a prefetch with)")
    g.add_argument("--hicache-write-policy", default="write_through", choices=WRITE_POLICIES,
                   help="when pages move down a tier (SGLang's; default write_through)")
    g.add_argument("--strict-idle", action="store_true",
                   help="refuse attach/detach unless no request is queued or running (SGLang's rule); "
                        "default: switch under traffic (quiesce)")
    g.add_argument("--breaker-threshold", type=int, default=5,
                   help="consecutive failed backend calls before L3 is detached automatically (default 5)")


def node_config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The ``NodeConfig`` the flags describe (also applies ``--torch-threads`` to this process)."""
    if args.torch_threads and args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    shape = resolve_shape(args.model_preset, args.num_layers, args.num_kv_heads, args.head_dim,
                          args.kv_dtype, args.mla)
    backend = getattr(args, "hicache_storage_backend", None)
    extra = parse_json_or_file(getattr(args, "hicache_storage_backend_extra_config", None))
    return NodeConfig(
        shape=shape,
        page_size=args.page_size,
        dp_size=args.dp_size,
        device=args.device,
        device_capacity_tokens=args.device_capacity_tokens,
        host_capacity_tokens=args.host_capacity_tokens,
        hicache_ratio=args.hicache_ratio,
        hicache_size_gb=args.hicache_size,
        mem_layout=args.hicache_mem_layout,
        storage_backend=backend or None,
        storage_extra_config=extra,
        prefetch_policy=args.hicache_storage_prefetch_policy,
        write_policy=args.hicache_write_policy,
        strict_idle=args.strict_idle,
        breaker_threshold=args.breaker_threshold,
    )
