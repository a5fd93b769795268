"""``hicache replay``: replay a Mooncake-format trace against a node (HTTP or in-process)."""

from __future__ import annotations

import argparse
import json
from typing import Any

#: The subcommands this module registers and their one-line help (``hicache --help`` lists
#: them without building their parsers).
COMMANDS: dict[str, str] = {
    "replay": "replay a Mooncake trace against a node; hit ratio per tier, verification, plot",
}


def register(sub: Any) -> None:
    from hicache_core.node.cli_args import add_node_arguments

    p: argparse.ArgumentParser = sub.add_parser(
        "replay", help=COMMANDS["replay"],
        description="Without --url an in-process node is built from the node flags below.",
    )
    p.add_argument("trace", nargs="?", default=None,
                   help="Mooncake-format .jsonl (default: the bundled sample of the conversation trace)")
    p.add_argument("--url", help="a running node (hicache serve); default: an in-process node")
    p.add_argument("--api-key", default=None, help="bearer key sent with requests (if the node wants one)")
    p.add_argument("--limit", type=int, default=None, help="replay the first N requests")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None,
                      help="follow the trace's timestamps, F times faster (e.g. 10)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="ignore timestamps (the default)")
    p.add_argument("--timestamp-unit", choices=("ms", "s", "us"), default="ms",
                   help="unit of the trace's timestamps (Mooncake traces: ms, the default); only --speed uses them")
    p.add_argument("--block-tokens", type=int, default=None, metavar="N",
                   help="tokens per block id (Mooncake traces: 512, Qwen traces: 16); default: inferred from "
                        "the trace's input_length against its block counts")
    p.add_argument("--max-gap", type=float, default=None, metavar="SECONDS",
                   help="with --speed: wait at most this long between two requests; longer idle gaps are cut "
                        "and later requests keep their spacing")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    p.add_argument("--plot", default=None, help="write hit ratio per tier over trace time to this PNG")
    p.add_argument("--unbounded", action="store_true",
                   help="in-process node: size L1 to hold every page of the replayed requests "
                        "(gives the trace's own prefix-reuse figure)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_node_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hicache_core.controller import ControllerError
    from hicache_core.node.tokens import check_page_fits_blocks
    from hicache_core.replay.reference import prefix_reuse
    from hicache_core.replay.report import print_report, write_plot
    from hicache_core.replay.runner import replay
    from hicache_core.replay.targets import HttpTarget, LocalTarget, Target
    from hicache_core.replay.trace import MOONCAKE_BLOCK_TOKENS, load_trace, sample_trace_path
    from hicache_core.spec.errors import HiCacheError

    err = Console(stderr=True)
    if (args.speed is not None and args.speed <= 0) or (args.max_gap is not None and args.max_gap < 0):
        err.print("[red]--speed must be positive and --max-gap must not be negative[/]")
        return 2
    try:
        requests = load_trace(args.trace or sample_trace_path(), args.limit, args.timestamp_unit, args.block_tokens)
    except (OSError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        return 2
    if not requests:
        err.print("[red]the trace holds no requests[/]")
        return 2
    if args.speed:
        stamps = [r.timestamp_ms for r in requests]
        hours = (max(stamps) - min(stamps)) / 1000.0 / args.speed / 3600.0
        if hours > 1.0 and args.max_gap is None:
            err.print(f"[yellow]paced replay will take up to {hours:.1f} h at --speed {args.speed:g}; if the "
                      "timestamps are not in ms give --timestamp-unit, or cut idle gaps with --max-gap[/]", soft_wrap=True)
        elif args.timestamp_unit == "ms" and any(s != int(s) for s in stamps[:1000]):
            # Qwen (Bailian) traces give seconds as fractions; read as ms they would replay 1000x fast.
            err.print("[yellow]the trace's timestamps have fractions: if they are seconds (Alibaba's Qwen traces) "
                      "give --timestamp-unit s[/]", soft_wrap=True)
    block = requests[0].block_tokens
    if args.block_tokens is None and block != MOONCAKE_BLOCK_TOKENS and not args.json:
        err.print(f"trace blocks: {block} tokens each (inferred from input_length; --block-tokens overrides)")
    target: Target
    if args.url:
        http = HttpTarget(args.url, api_key=args.api_key)
        try:
            http.wait_ready(10.0)
        except RuntimeError as exc:
            err.print(f"[red]{exc}[/]")
            return 1
        target = http
    else:
        from hicache_core.node.cli_args import node_config_from_args
        from hicache_core.node.node import Node

        try:
            config = node_config_from_args(args)
            check_page_fits_blocks(config.page_size, block)  # before the replay, not once per request
            if args.unbounded:
                blocks = prefix_reuse(requests).distinct_blocks
                config.device_capacity_tokens = (blocks + 1) * max(block, config.page_size)
                config.host_capacity_tokens = config.page_size * 8
            node = Node(config)
        except (ControllerError, HiCacheError, ValueError) as exc:
            err.print(f"[red]{exc}[/]")
            return 2
        target = LocalTarget(node)
    try:
        result = replay(target, requests, speed=args.speed, concurrency=args.concurrency, max_gap_s=args.max_gap,
                        progress=not args.no_progress and not args.json)
    finally:
        target.close()
    if args.json:
        summary = result.summary()
        print(json.dumps(summary))
    else:
        summary = print_report(result, Console())
    if args.plot:
        path = write_plot(result, args.plot)
        err.print(f"plot written to {path}")
    bad = summary["failed_requests"] or summary["verify_errors"]
    if bad:
        err.print(f"[red]{summary['failed_requests']} failed request(s), {summary['verify_errors']} "
                  "verification error(s)[/]")
    return 1 if bad else 0
