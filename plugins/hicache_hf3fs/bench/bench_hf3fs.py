"""hf3fs backend (plain-file client) against raw preadv/pwritev on the same pre-sized file.

For each page size the same host-pool pages go to the same slot offsets three ways: raw
``os.pwritev``/``os.preadv`` one page at a time (the floor of any per-page client), and the
backend's ``batch_set_v1``/``batch_get_v1`` in batches of 128 with in-process metadata and 1 or
N I/O jobs (optionally also with the shared HTTP metadata service). The machine's memcpy
bandwidth is printed as the physical limit: the file lives in the page cache, so every path
is a memory copy plus system-call and bookkeeping costs.

    python plugins/hicache_hf3fs/bench/bench_hf3fs.py [--total-mib 256] [--jobs 4] [--with-server]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from hicache_hf3fs.store import Hf3fsStore
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.testing.processes import ServiceProcess

BATCH = 128
# page_size 16, 4 layers, 4 heads, bf16 K and V: head_dim 64 -> 64 KiB pages, 1024 -> 1 MiB.
PAGE_SHAPES = {"64 KiB": 64, "1 MiB": 1024}


def memcpy_gbps(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def timed(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def raw_pass(fd: int, views: list[list[memoryview]], page_bytes: int, write: bool) -> None:
    """Every page to (or from) slot i of the file, one positional system call each."""
    call = os.pwritev if write else os.preadv
    for i, v in enumerate(views):
        call(fd, v, i * page_bytes)


def start_service() -> ServiceProcess:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf3fs_testutil import start_metadata_service

    return start_metadata_service()


def run(args: argparse.Namespace) -> None:
    console = Console()
    limit = memcpy_gbps()
    table = Table(title=f"hf3fs backend vs raw preadv/pwritev (page cache; memcpy limit {limit:.1f} GB/s)")
    for col in ("page", "path", "jobs", "write GB/s", "read GB/s", "read % of raw", "pages/s (read)"):
        table.add_column(col, justify="right" if col not in ("page", "path") else "left")
    server = start_service() if args.with_server else None
    own_dir = args.dir is None
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="hf3fs-bench-"))
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmarking", total=len(PAGE_SHAPES) * (3 + bool(server)))
            for label, head_dim in PAGE_SHAPES.items():
                probe = HostKVPool(size=16, page_size=16, layer_num=4, head_num=4, head_dim=head_dim)
                pages = max(BATCH, (args.total_mib << 20) // probe.page_bytes)
                pool = HostKVPool(size=pages * 16, page_size=16, layer_num=4, head_num=4, head_dim=head_dim)
                pool.kv_buffer.view(-1).view(torch.uint8).fill_(7)
                idx = pool.alloc(pages * 16)
                assert idx is not None
                page_list = pool.indices_to_pages(idx)
                total = pages * pool.page_bytes
                file_size = total + pool.page_bytes

                # Raw: one positional system call per page, one thread.
                raw_path = workdir / f"raw-{label.replace(' ', '')}.bin"
                fd = os.open(raw_path, os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(fd, file_size)
                views = [pool.page_memoryviews(p) for p in page_list]
                pb = pool.page_bytes
                w = timed(partial(raw_pass, fd, views, pb, True), args.repeats)
                r = timed(partial(raw_pass, fd, views, pb, False), args.repeats)
                os.close(fd)
                raw_read = total / r / 1e9
                table.add_row(label, "raw preadv/pwritev", "1", f"{total / w / 1e9:.2f}", f"{raw_read:.2f}",
                              "100%", f"{pages / r:,.0f}")
                progress.advance(task)

                variants: list[tuple[str, int, str]] = [("plugin, in-process metadata", 1, ""),
                                                         ("plugin, in-process metadata", args.jobs, "")]
                if server is not None:
                    variants.append(("plugin, HTTP metadata service", args.jobs, server.url))
                for name, jobs, url in variants:
                    prefix = workdir / f"kv-{label.replace(' ', '')}-{jobs}-{'srv' if url else 'local'}"
                    extra = {"file_path_prefix": str(prefix), "file_size": file_size, "numjobs": jobs,
                             "client": "file", **({"metadata_server_url": url} if url else {})}
                    backend = Hf3fsStore(HiCacheStorageConfig(model_name="bench", extra_config=extra))
                    backend.register_mem_pool_host(pool)
                    keys = [f"{i:064x}" for i in range(pages)]
                    batches = [(keys[i : i + BATCH], idx[i * 16 : (i + BATCH) * 16]) for i in range(0, pages, BATCH)]

                    def write_all(b: Hf3fsStore = backend, bs: list = batches) -> None:  # type: ignore[type-arg]
                        b.clear()
                        for ks, ix in bs:
                            assert all(b.batch_set_v1(ks, ix))

                    def read_all(b: Hf3fsStore = backend, bs: list = batches) -> None:  # type: ignore[type-arg]
                        for ks, ix in bs:
                            assert all(b.batch_get_v1(ks, ix))

                    w = timed(write_all, args.repeats)
                    r = timed(read_all, args.repeats)
                    backend.close()
                    table.add_row(label, name, str(jobs), f"{total / w / 1e9:.2f}", f"{total / r / 1e9:.2f}",
                                  f"{(total / r / 1e9) / raw_read:.0%}", f"{pages / r:,.0f}")
                    progress.advance(task)
    finally:
        if server is not None:
            server.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(table)
    console.print(
        f"{args.total_mib} MiB per run, best of {args.repeats}; batches of {BATCH} pages; files in the page "
        f"cache ({'a temporary directory, removed' if own_dir else workdir}). CPUs here: {os.cpu_count()}."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total-mib", type=int, default=256, help="bytes moved per run, in MiB")
    p.add_argument("--jobs", type=int, default=4, help="I/O jobs for the multi-job rows")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (the best is shown)")
    p.add_argument("--with-server", action="store_true", help="also run with the shared HTTP metadata service")
    p.add_argument("--dir", default=None, help="directory for the files (default: a new temp dir)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
