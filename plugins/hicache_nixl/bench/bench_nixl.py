"""Batch get/set bandwidth of the ``nixl`` backend (POSIX plugin) beside plain preadv/pwritev.

For each page size (64 KiB and 1 MiB by default) it fills a page_first host pool, then:

- stores and loads every page through ``batch_set_v1``/``batch_get_v1`` in batches of 128
  pages (SGLang's batch size), once per POSIX engine asked for;
- does the same with plain ``os.pwritev``/``os.preadv`` on the same filesystem, one page at
  a time, with the same file protocol (temporary file + rename on write);
- copies the same bytes with ``torch`` (memcpy), the memory-bandwidth ceiling.

All paths run against a warm page cache (the files were just written), so this measures the
software path, not the disk. Best and median of ``--rounds`` runs (best is the steadier
figure on a shared machine), in one rich table.

    python plugins/hicache_nixl/bench/bench_nixl.py --dir /tmp/nixl-bench --total-mib 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hicache_core import HiCacheStorageConfig, HostKVPool, create_backend

BATCH = 128
GIB = float(1 << 30)

# (tokens per page, layers, heads, head_dim) giving page_first pages of the wanted size (bf16).
SHAPES = {64 << 10: (16, 4, 4, 64), 1 << 20: (64, 16, 4, 64)}


def make_pool(page_bytes: int, pages: int) -> HostKVPool:
    page_size, layers, heads, dim = SHAPES[page_bytes]
    pool = HostKVPool(size=pages * page_size, page_size=page_size, layer_num=layers, head_num=heads,
                      head_dim=dim, dtype=torch.bfloat16, layout="page_first")
    assert pool.page_bytes == page_bytes, (pool.page_bytes, page_bytes)
    pool.kv_buffer.view(torch.uint8).random_(0, 256, generator=torch.Generator().manual_seed(0))
    return pool


def timed(fn: Callable[[], None], rounds: int) -> tuple[float, float]:
    """(best, median) seconds of ``rounds`` runs after one warm-up run."""
    fn()  # warm-up: creates the files, faults the pages in, fills the page cache
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def copier(src: torch.Tensor) -> Callable[[], None]:
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)

    return copy


def nixl_runs(pool: HostKVPool, root: Path, engine: str) -> tuple[Callable[[], None], Callable[[], None], object]:
    store = create_backend("nixl", HiCacheStorageConfig(
        model_name="bench", extra_config={"plugin": "POSIX", "storage_dir": str(root), "posix_engine": engine}))
    store.register_mem_pool_host(pool)
    keys = [f"page{i:08d}" for i in range(pool.page_num)]
    indices = pool.pages_to_indices(list(range(pool.page_num)))
    step = BATCH * pool.page_size

    def put() -> None:
        for b in range(0, len(keys), BATCH):
            ok = store.batch_set_v1(keys[b:b + BATCH], indices[b * pool.page_size: b * pool.page_size + step])
            assert all(ok), "nixl batch_set_v1 failed"

    def get() -> None:
        for b in range(0, len(keys), BATCH):
            ok = store.batch_get_v1(keys[b:b + BATCH], indices[b * pool.page_size: b * pool.page_size + step])
            assert all(ok), "nixl batch_get_v1 failed"

    return put, get, store


def plain_runs(pool: HostKVPool, root: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"page{i:08d}" for i in range(pool.page_num)]
    views = [pool.page_memoryviews(p) for p in range(pool.page_num)]

    def put() -> None:
        for path, bufs in zip(paths, views):
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwritev(fd, bufs, 0)
            finally:
                os.close(fd)
            os.replace(tmp, path)

    def get() -> None:
        for path, bufs in zip(paths, views):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.preadv(fd, bufs, 0)
            finally:
                os.close(fd)

    return put, get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp", help="filesystem to measure; a scratch folder is made in it and removed")
    ap.add_argument("--total-mib", type=int, default=256, help="bytes moved per page size and path (MiB)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per measurement; best and median are shown")
    ap.add_argument("--engines", default="aio,uring", help="POSIX engines to run (aio, uring, posix_aio, default)")
    ap.add_argument("--sizes", default="64K,1M", help="page sizes: 64K and/or 1M")
    args = ap.parse_args()
    sizes = [{"64K": 64 << 10, "1M": 1 << 20}[s.strip().upper()] for s in args.sizes.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    base = Path(tempfile.mkdtemp(prefix="hicache-nixl-bench-", dir=args.dir))
    fs_block = os.statvfs(base).f_bsize
    console = Console(width=max(110, Console().width))
    rows: list[tuple[str, str, str, float, float, float]] = []
    steps = len(sizes) * (len(engines) + 2)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmarking", total=steps)
            for page_bytes in sizes:
                pages = max(BATCH, (args.total_mib << 20) // page_bytes)
                pool = make_pool(page_bytes, pages)
                label = f"{page_bytes >> 10} KiB" if page_bytes < (1 << 20) else f"{page_bytes >> 20} MiB"
                moved = pages * page_bytes
                progress.update(task, description=f"{label}: plain preadv/pwritev")
                put, get = plain_runs(pool, base / "plain")
                plain_put, plain_get = timed(put, args.rounds), timed(get, args.rounds)
                rows += [(label, "set", "os.pwritev (1 page at a time)", moved / plain_put[0] / GIB,
                          moved / plain_put[1] / GIB, 1.0),
                         (label, "get", "os.preadv (1 page at a time)", moved / plain_get[0] / GIB,
                          moved / plain_get[1] / GIB, 1.0)]
                progress.advance(task)
                for engine in engines:
                    progress.update(task, description=f"{label}: nixl POSIX {engine}")
                    nput, nget, store = nixl_runs(pool, base / f"nixl-{engine}", engine)
                    t_put, t_get = timed(nput, args.rounds), timed(nget, args.rounds)
                    store.close()  # type: ignore[attr-defined]
                    rows += [(label, "set", f"nixl POSIX {engine} (batch {BATCH})", moved / t_put[0] / GIB,
                              moved / t_put[1] / GIB, plain_put[0] / t_put[0]),
                             (label, "get", f"nixl POSIX {engine} (batch {BATCH})", moved / t_get[0] / GIB,
                              moved / t_get[1] / GIB, plain_get[0] / t_get[0])]
                    progress.advance(task)
                progress.update(task, description=f"{label}: memcpy ceiling")
                src = pool.kv_buffer.view(-1).view(torch.uint8)
                t_copy = timed(copier(src), args.rounds)
                rows.append((label, "copy", "memcpy (torch copy_, limit)", src.numel() / t_copy[0] / GIB,
                             src.numel() / t_copy[1] / GIB, float("nan")))
                progress.advance(task)
                del pool, src
                for sub in base.iterdir():
                    shutil.rmtree(sub, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    table = Table(title=f"hicache nixl backend vs plain preadv/pwritev ({args.total_mib} MiB per row, "
                        f"{args.rounds} runs, warm page cache, {os.cpu_count()} CPUs)")
    for col in ("page", "op", "path", "GiB/s best", "GiB/s median", "x plain (best)"):
        table.add_column(col, justify="left" if col in ("page", "op", "path") else "right")
    for label, op, path, best, median, ratio in rows:
        table.add_row(label, op, path, f"{best:.2f}", f"{median:.2f}", "" if ratio != ratio else f"{ratio:.2f}")
    console.print(table)
    console.print(f"directory: {base} (block size {fs_block}); nixl rows include the backend's "
                  "open/register/rename work per page, as a real batch does.")


if __name__ == "__main__":
    main()
