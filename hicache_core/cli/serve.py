"""``hicache serve``: the reference node over HTTP; ``hicache demo``: the quick-start scenario."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The subcommands this module registers and their one-line help (``hicache --help`` lists
#: them without building their parsers).
COMMANDS: dict[str, str] = {
    "serve": "run the reference node: L1 + L2 + an L3 backend, with SGLang's admin API",
    "demo": "quick start: a node with the file backend, the bundled trace, detach/attach/switch live",
}


def register(sub: Any) -> None:
    from hicache_core.node.cli_args import add_node_arguments

    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help=COMMANDS["serve"],
        description="Plays the cache side of an LLM engine (L1 device, L2 host, L3 backend) over HTTP: "
                    "POST /generate, PUT/DELETE/GET /hicache/storage-backend, /hicache/status, /health, /metrics.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=30000, help="port (default 30000, as SGLang)")
    p.add_argument("--admin-api-key", default=None,
                   help="key for the admin endpoints (Authorization: Bearer KEY); without one they answer 400. "
                        "Visible in ps: prefer --admin-api-key-file or $HICACHE_ADMIN_API_KEY")
    p.add_argument("--admin-api-key-file", default=None, metavar="PATH",
                   help="read the admin key from the first line of this file")
    p.add_argument("--max-request-tokens", type=int, default=1 << 21,
                   help="largest /generate request in tokens (input_ids, hash_ids x block_tokens, input_length); "
                        "default 2097152")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    add_node_arguments(p)
    p.set_defaults(handler=run_serve)

    d: argparse.ArgumentParser = sub.add_parser(
        "demo", help=COMMANDS["demo"],
    )
    d.add_argument("--workdir", help="where L3 files, the log and the plot go (default: a new temp dir)")
    d.add_argument("--limit", type=int, default=None, help="replay the first N requests of the sample")
    d.add_argument("--plot", default=None, help="PNG to write (default WORKDIR/hicache_demo.png)")
    d.add_argument("--json", action="store_true", help="also print the summary as JSON")
    d.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    d.set_defaults(handler=run_demo)


def run_serve(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hicache_core.controller import ControllerError
    from hicache_core.node.admin_key import check_bind, resolve_admin_key
    from hicache_core.node.app import RequestLimits
    from hicache_core.node.cli_args import node_config_from_args
    from hicache_core.node.node import Node
    from hicache_core.node.server import serve
    from hicache_core.spec.errors import HiCacheError

    err = Console(stderr=True, soft_wrap=True)
    try:
        admin_key = resolve_admin_key(args.admin_api_key, args.admin_api_key_file)
        bind_warning = check_bind(args.host, admin_key)
        if args.max_request_tokens < 1:
            raise ValueError(f"--max-request-tokens must be at least 1, got {args.max_request_tokens}")
        config = node_config_from_args(args)
        node = Node(config)
    except (ControllerError, HiCacheError, ValueError) as exc:
        err.print(f"[red]hicache serve: {exc}[/]")
        return 2
    if bind_warning:
        err.print(f"[bold red]{bind_warning}[/]")
    shape = config.shape
    backend = node.backend_view()["hicache_storage_backend"]
    err.print(
        f"hicache node on http://{args.host}:{args.port}  ranks={config.dp_size}  device={node.device}  "
        f"{shape.describe()}\n  L1 {config.device_tokens():,} tokens, L2 {config.host_tokens():,} tokens per rank "
        f"({config.mem_layout}); L3: {backend or 'none (attach with PUT /hicache/storage-backend)'}"
        + ("" if admin_key else "\n  no admin key: the admin endpoints answer 400")
    )
    serve(node, args.host, args.port, admin_key, args.log_level, RequestLimits(max_request_tokens=args.max_request_tokens))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from hicache_core.replay.demo import run_demo as demo

    return demo(workdir=args.workdir, limit=args.limit, plot=args.plot, as_json=args.json,
                concurrency=args.concurrency)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
