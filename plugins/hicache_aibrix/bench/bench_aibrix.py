"""Throughput of the AIBrix backend's v1 path, beside the raw limit of what lies under it.

For each AIBrix mode (in-memory L1; L1 with the ROCKSDB or SHFS connector; each connector
alone) it writes a batch of host-pool pages with ``batch_set_v1`` and reads them back with
``batch_get_v1``, and prints GB/s in a rich table next to the raw limits measured on the same
bytes on this machine:

- memcpy: one contiguous ``torch`` copy of a page (the floor of any in-memory store);
- page->block copy: the strided copy this backend does (pool layout -> AIBrix block layout);
- rocksdict put/get and plain file write/read of the same bytes (the connectors' media).

Each round writes new keys, so AIBrix places them in slab memory it has not touched before:
"set" pays those first-touch page faults, which the raw limits (warm buffers) do not.

Usage: ``python bench/bench_aibrix.py [--pages 32] [--page-size 32] [--rounds 3]``.
Everything runs in a temporary directory and ends by itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from hicache_aibrix.layout import PageBlockMapper
from hicache_aibrix.store import AIBrixStore
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hicache_core import HiCacheStorageConfig, HostKVPool

MODES: dict[str, dict[str, object]] = {
    "L1 memory": {"l2_backend": "none"},
    "L1 + ROCKSDB": {"l2_backend": "ROCKSDB"},
    "L1 + SHFS": {"l2_backend": "SHFS"},
    "ROCKSDB only": {"l2_backend": "ROCKSDB", "l1_enabled": False},
    "SHFS only": {"l2_backend": "SHFS", "l1_enabled": False},
}


def best_rate(nbytes: int, rounds: int, fn: Callable[[], object]) -> float:
    """The best GB/s of ``rounds`` timed runs of ``fn`` moving ``nbytes``, after one untimed run.

    The untimed run takes the first-touch page faults of fresh buffers out of the figure.
    """
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def make_pool(args: argparse.Namespace) -> HostKVPool:
    return HostKVPool(size=2 * args.pages * args.page_size, page_size=args.page_size, layer_num=args.layers,
                      head_num=args.heads, head_dim=args.head_dim, dtype=torch.bfloat16, layout=args.layout)


def raw_limits(args: argparse.Namespace, root: Path) -> dict[str, tuple[float, float]]:
    """(write, read) GB/s of the media under the backend, for the same page bytes."""
    pool = make_pool(args)
    n, size = args.pages, pool.page_bytes
    pages = [torch.randint(0, 256, (size,), dtype=torch.uint8) for _ in range(n)]
    dst = [torch.empty_like(p) for p in pages]
    total = n * size
    limits: dict[str, tuple[float, float]] = {}

    def memcpy_out() -> None:
        for d, p in zip(dst, pages):
            d.copy_(p)

    memcpy = best_rate(total, args.rounds, memcpy_out)
    limits["memcpy"] = (memcpy, memcpy)

    mapper = PageBlockMapper(pool, "NCLD")
    blocks = [torch.empty(mapper.block_shape_u8, dtype=torch.uint8) for _ in range(n)]
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    page_ids = pool.indices_to_pages(idx)

    def to_blocks() -> None:
        for b, p in zip(blocks, page_ids):
            b.copy_(mapper.pool_page(p))

    def from_blocks() -> None:
        for b, p in zip(blocks, page_ids):
            mapper.pool_page(p).copy_(b)

    limits["page->block copy"] = (best_rate(total, args.rounds, to_blocks), best_rate(total, args.rounds, from_blocks))

    import rocksdict

    db = rocksdict.Rdict(str(root / "raw-rocksdb"), rocksdict.Options(raw_mode=True))
    keys = [uuid.uuid4().bytes for _ in range(n)]
    blobs = [bytes(p.numpy()) for p in pages]

    def rocks_put() -> None:
        for k, b in zip(keys, blobs):
            db.put(k, b)

    def rocks_get() -> None:
        for k in keys:
            db.get(k)

    limits["rocksdict put/get"] = (best_rate(total, args.rounds, rocks_put), best_rate(total, args.rounds, rocks_get))
    db.close()

    files = root / "raw-files"
    files.mkdir()
    names = [files / k.hex() for k in keys]

    def file_write() -> None:
        for name, b in zip(names, blobs):
            tmp = name.with_suffix(".tmp")
            tmp.write_bytes(b)
            os.replace(tmp, name)

    def file_read() -> None:
        for name in names:
            name.read_bytes()

    limits["file write/read"] = (best_rate(total, args.rounds, file_write), best_rate(total, args.rounds, file_read))
    return limits


def run_mode(args: argparse.Namespace, root: Path, extra: dict[str, object]) -> tuple[float, float, float]:
    """(set GB/s, get GB/s, get GB/s after reopen) for one AIBrix mode."""
    config_extra = {"l1_capacity_gb": 1, "rocksdb_root": str(root / "rocksdb"),
                    "shfs_root": str(root / "shfs"), **extra}
    config = HiCacheStorageConfig(model_name="bench", extra_config=config_extra)
    store = AIBrixStore(config)
    pool = make_pool(args)
    store.register_mem_pool_host(pool)
    n = args.pages
    src = pool.alloc(n * pool.page_size)
    dst = pool.alloc(n * pool.page_size)
    assert src is not None and dst is not None
    total = n * pool.page_bytes
    rounds_keys = [[uuid.uuid4().hex for _ in range(n)] for _ in range(args.rounds + 1)]
    it = iter(rounds_keys)

    def do_set() -> None:
        assert all(store.batch_set_v1(next(it), src))

    set_rate = best_rate(total, args.rounds, do_set)
    keys = rounds_keys[-1]

    def do_get() -> None:
        assert all(store.batch_get_v1(keys, dst))

    get_rate = best_rate(total, args.rounds, do_get)
    reopen_rate = float("nan")
    if store.capabilities.persistent:
        store.close()
        store = AIBrixStore(config)
        store.register_mem_pool_host(pool)
        # The first read after reopening comes from L2 (later ones may hit L1 again).
        start = time.perf_counter()
        do_get()
        reopen_rate = total / (time.perf_counter() - start) / 1e9
    store.close()
    return set_rate, get_rate, reopen_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=32, help="pages per batch")
    parser.add_argument("--page-size", type=int, default=32, help="tokens per page")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--layout", default="page_first", choices=("layer_first", "page_first", "page_first_direct"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    page_bytes = make_pool(args).page_bytes
    console.print(f"{args.pages} pages of {page_bytes / 2**20:.2f} MiB ({args.layout}), best of {args.rounds} rounds")

    with tempfile.TemporaryDirectory(prefix="hicache-aibrix-bench-") as tmp:
        root = Path(tmp)
        results: dict[str, tuple[float, float, float]] = {}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("measuring", total=len(MODES) + 1)
            limits = raw_limits(args, root)
            progress.advance(task)
            for name, extra in MODES.items():
                progress.update(task, description=name)
                results[name] = run_mode(args, root / name.replace(" ", "_").replace("+", ""), extra)
                progress.advance(task)

    table = Table(title="hicache-aibrix v1 throughput (GB/s)")
    for col in ("mode", "set", "get", "get after reopen (L2)", "raw limit (write / read)"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    limit_for = {
        "L1 memory": ("memcpy", "page->block copy"),  # an in-memory store can at best copy once
        "L1 + ROCKSDB": ("rocksdict put/get",),
        "L1 + SHFS": ("file write/read",),
        "ROCKSDB only": ("rocksdict put/get",),
        "SHFS only": ("file write/read",),
    }
    for name, (s, g, r) in results.items():
        limit_text = ", ".join(f"{k} {limits[k][0]:.2f} / {limits[k][1]:.2f}" for k in limit_for[name])
        table.add_row(name, f"{s:.2f}", f"{g:.2f}", "-" if r != r else f"{r:.2f}", limit_text)
    console.print(table)


if __name__ == "__main__":
    main()
