"""The node's own L3 path: L3 -> L2 load bandwidth and per-request prefetch time on a real trace.

Two in-process nodes share one L3 folder. The first replays the first ``--limit`` requests of a
trace and writes every page it computes to L3; the second, with empty L1 and L2, replays the
same requests, so every prefix it reuses comes from L3. Printed beside the second node's figures:
the same bytes read raw from the L3 folder's files (``os.preadv`` in 1 MiB chunks, page cache
as the node found it), the limit a page loader cannot beat.

    python bench/bench_node_l3.py                       # conversation trace, 4,000 requests
    python bench/bench_node_l3.py --limit 500 --scheme pagefile

The default model preset ``small`` with 64-token pages makes 64 KiB pages (1 KiB per token).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hicache_core.node.node import Node, NodeConfig
from hicache_core.node.presets import resolve_shape
from hicache_core.replay.runner import replay
from hicache_core.replay.targets import LocalTarget
from hicache_core.replay.trace import load_trace, sample_trace_path

SHARED_TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
GIB = 1 << 30


def _node(args: argparse.Namespace, root: Path) -> Node:
    extra: dict[str, Any] = {"path": str(root), "scheme": args.scheme, "max_bytes": args.max_bytes,
                             "prefetch_threshold": 0}
    return Node(NodeConfig(
        shape=resolve_shape(args.preset), page_size=args.page_size,
        device_capacity_tokens=args.l1_tokens, host_capacity_tokens=args.l2_tokens,
        storage_backend="file", storage_extra_config=extra,
        prefetch_policy="wait_complete", write_policy="write_through",
    ))


def _prefetch_figures(node: Node) -> dict[str, float]:
    """Summed over ranks: bytes loaded from L3, seconds in the load calls, per-request times."""
    out = {"bytes": 0.0, "seconds": 0.0, "requests": 0.0, "request_seconds": 0.0}
    for rank in node.ranks:
        m = rank.controller.metrics
        counters = m.snapshot()
        out["bytes"] += counters["prefetch_bytes"]
        out["seconds"] += counters["prefetch_seconds"]
        out["requests"] += m.sample("hicache_prefetch_request_seconds_count") or 0
        out["request_seconds"] += m.sample("hicache_prefetch_request_seconds_sum") or 0
    return out


def _raw_read(root: Path, nbytes: float) -> tuple[float, float]:
    """Read ``nbytes`` of the L3 folder's files with preadv in 1 MiB chunks: (bytes, seconds)."""
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size, reverse=True)
    buf = bytearray(1 << 20)
    done, t0 = 0, time.perf_counter()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            while done < nbytes:
                got = os.preadv(fd, [buf], done % max(1, path.stat().st_size))
                if got <= 0:
                    break
                done += got
                if done % max(1, path.stat().st_size) == 0:
                    break
        finally:
            os.close(fd)
        if done >= nbytes:
            break
    return float(done), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(SHARED_TRACE if SHARED_TRACE.exists() else sample_trace_path()))
    ap.add_argument("--limit", type=int, default=4000)
    ap.add_argument("--scheme", default="segment", choices=("segment", "pagefile", "sglang"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--page-size", type=int, default=64)
    ap.add_argument("--l1-tokens", type=int, default=256 * 1024)
    ap.add_argument("--l2-tokens", type=int, default=512 * 1024)
    ap.add_argument("--max-bytes", default="16GiB", help="the L3's size bound (LRU)")
    ap.add_argument("--dir", default=None, help="L3 folder (default: a temp folder, removed after)")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 110))
    requests = load_trace(args.trace, args.limit)
    root = Path(args.dir or tempfile.mkdtemp(prefix="hicache-l3-bench-"))
    try:
        results = {}
        for phase in ("fill", "read"):
            node = _node(args, root)
            target = LocalTarget(node)
            try:
                res = replay(target, requests, description=f"{phase} ({args.scheme})")
                node.wait_backups(60.0)
                results[phase] = (res, _prefetch_figures(node))
            finally:
                target.close()
        res, fig = results["read"]
        raw_bytes, raw_s = _raw_read(root, fig["bytes"])
        summary = res.summary()
        table = Table(title=f"node L3 -> L2, {len(requests)} requests, {args.preset} preset, "
                            f"{args.page_size}-token pages, file scheme {args.scheme}")
        for col in ("figure", "node (second pass)", "raw preadv of the same bytes"):
            table.add_column(col, no_wrap=True)
        bw = fig["bytes"] / fig["seconds"] / GIB if fig["seconds"] else 0.0
        raw_bw = raw_bytes / raw_s / GIB if raw_s else 0.0
        table.add_row("L3 -> L2 load bandwidth", f"{bw:.2f} GiB/s", f"{raw_bw:.2f} GiB/s ({bw / raw_bw:.0%})"
                      if raw_bw else "-")
        table.add_row("bytes loaded from L3", f"{fig['bytes'] / GIB:.2f} GiB", f"{raw_bytes / GIB:.2f} GiB")
        mean_ms = fig["request_seconds"] / fig["requests"] * 1e3 if fig["requests"] else 0.0
        raw_ms = (raw_s / fig["requests"] * 1e3) if fig["requests"] else 0.0
        table.add_row("prefetch time per request with an L3 hit (mean)", f"{mean_ms:.2f} ms",
                      f"{raw_ms:.2f} ms")
        table.add_row("requests with an L3 hit", f"{int(fig['requests'])}", "")
        hits = summary.get("hit_tokens", {})
        if hits:
            table.add_row("tokens served from L3 / input", f"{hits.get('storage', 0):,} / "
                          f"{summary.get('input_tokens', 0):,}", "")
        table.add_row("failed requests / verify errors",
                      f"{summary.get('failed_requests', '?')} / {summary.get('verify_errors', '?')}", "")
        console.print(table)
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
