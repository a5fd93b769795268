"""L2 -> L1 page-load bandwidth of the node beside a plain torch copy of the same bytes.

``python -m hicache_core.node.bench [--preset llama3-8b] [--page-size 64] [--gib 2] [--layout page_first]``

On a CUDA machine L2 is pinned host memory and L1 device memory: the node's load
(``DevicePool.load_from_host``: piece by piece, straight DMA) is compared with one
``copy_(non_blocking=True)`` of a pinned tensor of the same size, the raw limit (about
49 GiB/s on an H100). Without CUDA both run host to host (memcpy), which says nothing about a
GPU; the table says which case ran.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from hicache_core.memory.host_pool import LAYOUTS, HostKVPool
from hicache_core.node.device_pool import DevicePool, pick_device
from hicache_core.node.host_pages import HostPages
from hicache_core.node.kvgen import mismatched_pages
from hicache_core.node.presets import PRESETS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(preset: str = "llama3-8b", page_size: int = 64, gib: float = 2.0, layout: str = "page_first",
            repeats: int = 5, device: str = "auto") -> dict[str, Any]:
    shape = PRESETS[preset]
    dev = pick_device(device)
    page_bytes = shape.bytes_per_token * page_size
    pages = max(1, int(gib * 2**30) // page_bytes)
    pool = HostKVPool(pages * page_size, page_size, shape.layer_num, shape.head_num, shape.head_dim,
                      shape.torch_dtype, layout, shape.is_mla)
    host = HostPages(pool)
    l1 = DevicePool(pages, page_bytes, dev)
    hashes = [f"{i + 1:064x}" for i in range(pages)]
    # Fill L2 with verifiable pages, a chunk at a time.
    from hicache_core.node.kvgen import expected_pages

    for start in range(0, pages, 64):
        chunk = list(range(start, min(pages, start + 64)))
        host.write(chunk, expected_pages([hashes[p] for p in chunk], page_bytes))
    slots = list(range(pages))
    order = list(range(pages))
    l1.load_from_host(host, slots, order)  # warm-up (and first-touch of device memory)
    _sync(dev)
    node_s = []
    for _ in range(repeats):
        t = time.perf_counter()
        l1.load_from_host(host, slots, order)
        _sync(dev)
        node_s.append(time.perf_counter() - t)
    bad = mismatched_pages(hashes, l1.read(slots))
    total = pages * page_bytes
    src = torch.empty(total, dtype=torch.uint8, pin_memory=dev.type == "cuda")
    dst = torch.empty(total, dtype=torch.uint8, device=dev)
    dst.copy_(src, non_blocking=True)
    _sync(dev)
    raw_s = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        _sync(dev)
        raw_s.append(time.perf_counter() - t)
    node_bw = total / min(node_s) / 2**30
    raw_bw = total / min(raw_s) / 2**30
    return {
        "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "preset": preset, "layout": layout, "page_size": page_size, "page_bytes": page_bytes, "pages": pages,
        "bytes": total, "pinned": pool.pin_memory, "node_gib_s": node_bw, "raw_gib_s": raw_bw,
        "ratio": node_bw / raw_bw if raw_bw else 0.0, "verify_errors": len(bad),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama3-8b", choices=sorted(PRESETS))
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--gib", type=float, default=2.0, help="bytes to move per run, GiB")
    p.add_argument("--layout", default="page_first", choices=LAYOUTS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    r = measure(args.preset, args.page_size, args.gib, args.layout, args.repeats, args.device)
    if args.json:
        import json

        print(json.dumps(r))
        return 0 if r["verify_errors"] == 0 else 1
    from rich.console import Console
    from rich.table import Table

    kind = f"pinned host -> {r['gpu']}" if r["gpu"] else "host -> host (no CUDA: memcpy, not a GPU figure)"
    table = Table(title=f"L2 -> L1 page loads, {kind}")
    for col in ("path", "preset / layout", "pages x bytes", "GiB/s", "of raw"):
        table.add_column(col, justify="right" if col in ("GiB/s", "of raw") else "left")
    table.add_row("node load (piece DMA)" if r["gpu"] else "node load (gather)", f"{r['preset']} / {r['layout']}",
                  f"{r['pages']} x {r['page_bytes']:,}", f"{r['node_gib_s']:.1f}", f"{r['ratio']:.0%}")
    table.add_row("raw torch copy_ (limit)", "one contiguous tensor", f"{r['bytes']:,} B",
                  f"{r['raw_gib_s']:.1f}", "100%")
    Console().print(table)
    if r["verify_errors"]:
        Console().print(f"[red]{r['verify_errors']} page(s) arrived with wrong bytes[/]")
    return 0 if r["verify_errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
