"""Benchmark: the file backend's segment scheme beside SGLang's real ``HiCacheFile``, the
page-file scheme, and raw I/O, in one run on one disk.

For 128-page batches of 64 KiB and 1 MiB pages (bf16 MHA, ``page_first`` host pool), each
contender does, per round, on keys never written before: **set**, **get warm** (the pages just
written, from the page cache), **get cold** (the contender's files dropped from the page cache
first, untimed: ``fdatasync`` + ``posix_fadvise(DONTNEED)`` per file, or ``--drop-caches``
as root) and **exists** of the 128 keys. Rounds interleave the contenders (rotating their
order); the table shows medians. Every set starts with no dirty pages in the page cache (an
untimed ``sync`` before each pass), so no contender pays the writeback of another's pages, and
with the same supply of recently freed page-cache pages (``recycle_page_cache``); every round
starts from empty stores (each contender's files removed, untimed).

Contenders:

- ``SGLang HiCacheFile``: the class from the installed ``sglang`` (0.5.23), driven as SGLang's
  controller drives it (its generic page path: ``batch_set`` of ``get_data_page`` copies,
  ``batch_get`` into ``get_dummy_flat_data_page`` then ``set_from_flat_data_page``,
  ``batch_exists``). The host pool is hicache's ``HostKVPool``, which has the same methods.
- ``pagefile v1`` / ``segment v1``: hicache-file's two schemes, ``batch_set_v1`` /
  ``batch_get_v1`` / ``batch_exists`` straight into and out of the host pool.
- ``raw per-page files``: ``open`` + one ``pwritev``/``preadv`` + ``close`` per page (new files
  per round), ``stat`` per key for exists: the least one file per page costs.
- ``raw one file``: the same bytes to and from one preallocated file with as few
  ``pwritev``/``preadv`` calls as ``IOV_MAX`` allows: the disk and page-cache limit. Each
  set writes a new file preallocated (untimed) with ``posix_fallocate``, since a cache stores
  new pages in new space (earlier ones are kept until the round ends, as the stores keep
  their pages); gets read what the last set wrote. Where the segment store uses
  ``io_threads`` threads (1 MiB pages), ``raw one file, N threads`` does the same split over
  as many threads; the "% of one file" figures are against the better of the two rows.

Also printed: memory the segment index uses per stored page (measured with ``tracemalloc``),
beside the page-file scheme's LRU index.

Run: ``python plugins/hicache_file/bench/bench_segment.py [--rounds 5] [--dir /tmp]``.
The sglang import needs no torchvision here; when it does fail on it, an import-only stand-in
module is put in its place (stated in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from hicache_file.fileio import preadv_all, pwritev_all
from hicache_file.segment.index import SegmentIndex
from hicache_file.segment.pageio import PoolPages
from hicache_file.segment.store import SegmentStore
from hicache_file.segment.threads import PARALLEL_MIN_PAGE_BYTES
from hicache_file.store import FileStore
from rich.console import Console
from rich.table import Table

from hicache_core import HiCacheStorageConfig, HostKVPool

#: label -> (page_size tokens, layer_num, head_num, head_dim): bf16 MHA pages of that size.
SHAPES = {"64 KiB": (16, 4, 4, 64), "1 MiB": (64, 8, 8, 64)}
PAGES = 128
GiB = float(1 << 30)
OPS = ("set", "get warm", "get cold", "exists")


def import_sglang_file_backend() -> tuple[Any, Any, str]:
    """SGLang's ``HiCacheFile`` and ``HiCacheStorageConfig``, and a note on how they loaded."""
    os.environ.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)
    note = "sglang imported as installed"
    try:
        from sglang.srt.mem_cache import hicache_storage as hs
    except ImportError as exc:
        if "torchvision" not in str(exc):
            raise
        # torchvision from PyPI cannot import against CPU torch; SGLang's import path only
        # needs the name. An import-only stand-in (no torchvision code runs in this bench).
        stub = types.ModuleType("torchvision")
        stub.__path__ = []  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        from sglang.srt.mem_cache import hicache_storage as hs

        note = "sglang imported with an import-only torchvision stand-in"
    import sglang

    return hs.HiCacheFile, hs.HiCacheStorageConfig, f"{note} (sglang {sglang.__version__})"


def drop_cache(paths: list[str], as_root: bool) -> None:
    """Drop ``paths`` (or, as root with ``--drop-caches``, everything) from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            if not as_root:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if as_root:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def recycle_page_cache(directory: str, bufs: list[memoryview], copies: int) -> None:
    """Write ``copies`` times ``bufs`` to a scratch file and unlink it (untimed, before each set).

    A set fills new page-cache pages. Recently freed ones are cheap; memory not touched for a
    while can cost far more: on this VM (virtio-balloon free page reporting) the host drops
    free guest pages, and the copy into them then runs at 0.2-0.3 GiB/s, whoever writes (a
    writer that unlinked its previous file right before got recycled pages every time). After
    this, every contender's set starts with the same supply of recently freed pages.
    """
    path = os.path.join(directory, "recycle.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = sum(len(b) for b in bufs)
        for k in range(copies):
            pwritev_all(fd, bufs, k * size)
    finally:
        os.close(fd)
        os.unlink(path)


def files_under(path: str, suffix: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(path):
        out.extend(os.path.join(dirpath, n) for n in names if n.endswith(suffix))
    return out


@dataclass
class Contender:
    name: str
    set: Callable[[list[str]], None]
    get: Callable[[list[str]], None]
    exists: Callable[[list[str]], None] | None
    files: Callable[[], list[str]]
    #: Untimed work before each set (the one-file limit's fresh preallocated file).
    prepare: Callable[[], None] | None = None
    #: Untimed, between rounds: remove everything the contender stored.
    reset: Callable[[], None] | None = None
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


class OneFile:
    """The limit: the same bytes to and from one preallocated file, with as few ``pwritev`` /
    ``preadv`` calls as ``IOV_MAX`` allows, the buffers split in ``threads`` contiguous parts on
    as many threads (the segment store's ``io_threads`` at big pages: reads from the page cache
    then run side by side; buffered writes to one file take its inode lock in turn).

    Each set writes a new file preallocated (untimed) with ``posix_fallocate``, since a cache
    stores new pages in new space (rewriting a file already in the page cache would be a limit
    no cache can reach); gets read what the last set wrote. Earlier files are kept until the end,
    as the stores keep their pages: unlinking one right before the next set would hand that set
    the page-cache pages just freed, a head start no store gets (``recycle_page_cache``).
    """

    def __init__(self, path: str, src: list[memoryview], dst: list[memoryview], threads: int) -> None:
        self.base, self.threads, self.fd = path, threads, -1
        self.written: list[str] = []
        self.total = sum(len(b) for b in src)
        step = -(-len(src) // threads)
        self.src_parts = [_part(src, k, k + step) for k in range(0, len(src), step)]
        self.dst_parts = [_part(dst, k, k + step) for k in range(0, len(dst), step)]
        self.executor = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def fresh(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.written.append(f"{self.base}.{len(self.written)}")
        self.fd = os.open(self.written[-1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.posix_fallocate(self.fd, 0, self.total)

    def _all(self, call: Callable[[int, list[memoryview], int, int], int], parts: list[tuple[list[memoryview], int, int]]) -> None:
        fd = self.fd
        futures = [self.executor.submit(call, fd, *part) for part in parts[1:]] if self.executor else []
        done = call(fd, *parts[0]) + sum(f.result() for f in futures)
        assert done == self.total, f"one file: {done} of {self.total} bytes"

    def set(self, keys: list[str]) -> None:
        self._all(pwritev_all, self.src_parts)

    def get(self, keys: list[str]) -> None:
        self._all(preadv_all, self.dst_parts)

    def paths(self) -> list[str]:
        return self.written[-1:]

    def remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for path in self.written:
            os.unlink(path)
        self.written.clear()

    def close(self) -> None:
        self.remove()
        if self.executor is not None:
            self.executor.shutdown()


def _part(bufs: list[memoryview], lo: int, hi: int) -> tuple[list[memoryview], int, int]:
    """``(buffers, file offset, bytes)`` of ``bufs[lo:hi]`` laid end to end from offset 0."""
    part = bufs[lo:hi]
    return part, sum(len(b) for b in bufs[:lo]), sum(len(b) for b in part)


def build(label: str, root: str, sgl: tuple[Any, Any]) -> tuple[list[Contender], HostKVPool, Any, list[Any]]:
    page_size, layers, heads, dim = SHAPES[label]
    pool = HostKVPool(size=3 * PAGES * page_size, page_size=page_size, layer_num=layers, head_num=heads,
                      head_dim=dim, dtype=torch.bfloat16, layout="page_first")
    pool.kv_buffer.view(-1).view(torch.uint8).random_(0, 256)
    src = pool.alloc(PAGES * page_size)
    dst = pool.alloc(PAGES * page_size)
    assert src is not None and dst is not None
    src_pages, dst_pages = pool.indices_to_pages(src), pool.indices_to_pages(dst)
    model = f"bench-{label.replace(' ', '')}"
    views = PoolPages(pool)
    src_views, dst_views = views.views(src_pages), views.views(dst_pages)
    contenders: list[Contender] = []

    # SGLang's HiCacheFile through SGLang's generic page path.
    HiCacheFile, SGLConfig = sgl
    sgl_dir = os.path.join(root, "sglang")
    sgl_store = HiCacheFile(SGLConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name=model,
        extra_config={"file_storage_path": sgl_dir},
    ))

    def sgl_set(keys: list[str]) -> None:
        data = [pool.get_data_page(int(src[i * page_size])) for i in range(len(keys))]
        assert sgl_store.batch_set(keys, data)

    def sgl_get(keys: list[str]) -> None:
        dummies = [pool.get_dummy_flat_data_page() for _ in keys]
        got = sgl_store.batch_get(keys, dummies)
        for i, page in enumerate(got):
            assert page is not None
            pool.set_from_flat_data_page(int(dst[i * page_size]), page)

    def sgl_exists(keys: list[str]) -> None:
        assert sgl_store.batch_exists(keys) == len(keys)

    contenders.append(Contender("SGLang HiCacheFile", sgl_set, sgl_get, sgl_exists, lambda: files_under(sgl_dir, ".bin"),
                                 reset=sgl_store.clear))

    # hicache-file, both schemes, through v1.
    def hicache(name: str, store: Any, suffix: str, where: Callable[[], str]) -> Contender:
        store.register_mem_pool_host(pool)

        def do_set(keys: list[str]) -> None:
            assert all(store.batch_set_v1(keys, src))

        def do_get(keys: list[str]) -> None:
            assert all(store.batch_get_v1(keys, dst))

        def do_exists(keys: list[str]) -> None:
            assert store.batch_exists(keys) == len(keys)

        return Contender(name, do_set, do_get, do_exists, lambda: files_under(where(), suffix), reset=store.clear)

    pagefile = FileStore(HiCacheStorageConfig(model_name=model, extra_config={"path": os.path.join(root, "pagefile")}))
    contenders.append(hicache("pagefile v1", pagefile, ".hcp", lambda: pagefile.namespace_dir))
    segment = SegmentStore(HiCacheStorageConfig(model_name=model, extra_config={"path": os.path.join(root, "segment")}))
    contenders.append(hicache("segment v1", segment, ".seg", lambda: os.path.join(root, "segment")))
    checked = SegmentStore(HiCacheStorageConfig(
        model_name=model, extra_config={"path": os.path.join(root, "segment-always"), "verify": "always"},
    ))
    contenders.append(hicache("segment, verify always", checked, ".seg", lambda: os.path.join(root, "segment-always")))

    # Raw: one file per page.
    raw_dir = os.path.join(root, "raw-pages")
    os.makedirs(raw_dir)
    flags_new = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def raw_set(keys: list[str]) -> None:
        for key, bufs in zip(keys, src_views):
            fd = os.open(f"{raw_dir}/{key}.bin", flags_new, 0o644)
            os.pwritev(fd, bufs, 0)
            os.close(fd)

    def raw_get(keys: list[str]) -> None:
        for key, bufs in zip(keys, dst_views):
            fd = os.open(f"{raw_dir}/{key}.bin", os.O_RDONLY)
            os.preadv(fd, bufs, 0)
            os.close(fd)

    def raw_exists(keys: list[str]) -> None:
        for key in keys:
            os.stat(f"{raw_dir}/{key}.bin")

    def raw_reset() -> None:
        for path in files_under(raw_dir, ".bin"):
            os.unlink(path)

    contenders.append(Contender("raw per-page files", raw_set, raw_get, raw_exists, lambda: files_under(raw_dir, ".bin"),
                                reset=raw_reset))

    # Raw: one preallocated file, the same bytes; with the segment store's thread count too.
    src_flat = [v for page in src_views for v in page]
    dst_flat = [v for page in dst_views for v in page]
    files: list[OneFile] = [OneFile(os.path.join(root, "one-file.bin"), src_flat, dst_flat, 1)]
    threads = segment.settings.io_threads if pool.page_bytes >= PARALLEL_MIN_PAGE_BYTES else 1
    if threads > 1:
        files.append(OneFile(os.path.join(root, f"one-file-{threads}.bin"), src_flat, dst_flat, threads))
    for f in files:
        name = "raw one file" if f.threads == 1 else f"raw one file, {f.threads} threads"
        contenders.append(Contender(name, f.set, f.get, None, f.paths, prepare=f.fresh, reset=f.remove))
    return contenders, pool, (src_pages, dst_pages), [pagefile, segment, checked, *files]


def run_size(
    label: str, root: str, rounds: int, reps: int, sgl: tuple[Any, Any], as_root: bool,
) -> dict[str, dict[str, float]]:
    """Per round and contender, each op ``reps`` times (the best kept: the machine is shared and
    a pass that lost the CPU says nothing about the code); the median over rounds is reported."""
    contenders, pool, (src_pages, dst_pages), handles = build(label, root, sgl)
    nbytes = PAGES * pool.page_bytes
    src_flat = [v for page in PoolPages(pool).views(src_pages) for v in page]
    zeros = torch.zeros(pool.page_bytes, dtype=torch.uint8).view(pool.dtype)
    generation = iter(range(1 << 30))
    for c in contenders:
        c.times = {op: [] for op in OPS}

    def best(fn: Callable[[], None], before: Callable[[], None] | None = None) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of the fastest pass."""
        times = []
        for _ in range(reps):
            if before is not None:
                before()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        return min(times)

    def measure(c: Contender, check: bool) -> None:
        keys: list[str] = []

        def new_keys() -> None:  # untimed: keys never written before, by anyone
            g = next(generation)
            keys[:] = [f"{g:08x}{i:056x}"[::-1] for i in range(PAGES)]
            if c.prepare is not None:
                c.prepare()
            recycle_page_cache(root, src_flat, 2)
            # Every set starts with no dirty pages: without this, a set pays (through the
            # kernel's dirty throttling and writeback) for what earlier contenders wrote, and
            # the one-file limit, whose file is unlinked dirty, pays for nothing.
            os.sync()

        c.times["set"].append(best(lambda: c.set(keys), new_keys))
        for p in dst_pages:  # a read must bring the bytes back, not find them there
            pool.write_page(p, zeros)
        c.times["get warm"].append(best(lambda: c.get(keys)))
        if check:
            for s, d in zip(src_pages, dst_pages):
                same = torch.equal(pool.read_page(s).view(torch.uint8), pool.read_page(d).view(torch.uint8))
                assert same, f"{c.name} read back other bytes"
        c.times["get cold"].append(best(lambda: c.get(keys), lambda: drop_cache(c.files(), as_root)))
        if c.exists is not None:
            c.times["exists"].append(best(lambda: c.exists(keys)))

    for r in range(rounds):
        for c in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            measure(c, check=r == 0)
        # Each round starts empty: the page cache and the disk hold one round's pages at most,
        # and every contender's sets find the same state in every round.
        for c in contenders:
            if c.reset is not None:
                c.reset()
    for handle in handles:
        handle.close()
    out: dict[str, dict[str, float]] = {}
    for c in contenders:
        row: dict[str, float] = {}
        for op in OPS:
            if c.times[op]:
                for clock, tag in ((0, ""), (1, " cpu")):
                    med = statistics.median(t[clock] for t in c.times[op])
                    if clock and op == "get cold":
                        continue  # waiting for the disk is not CPU time
                    row[op + tag] = med * 1e3 if op == "exists" else nbytes / max(med, 1e-9) / GiB
        out[c.name] = row
    return out


def index_bytes_per_page(n: int = 100_000) -> tuple[float, float]:
    """Bytes of index memory per stored page: the segment index, and the page-file LRU index."""
    from hicache_file.lru import PageIndex
    from hicache_file.segment.format import key_hash

    keys = [key_hash(f"{i:064x}@hc1.model.mha-bf16-l32h8d128-p64-clthd.tp0of1") for i in range(n)]
    names = [f"{i:064x}"[:2] + f"/{i:064x}_model_0_1.hcp" for i in range(n)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = SegmentIndex()
    seg = index.segment(1, 0.0)
    assert seg is not None
    for i, key in enumerate(keys):
        index.put(key, seg, i * 65600, 65536, 0.0, checked=False)
    seg_bytes = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    names_copy = list(names)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    lru = PageIndex()
    for name in names_copy:
        lru.put(name, 65568)
    lru_bytes = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    # The key strings themselves live in the page-file index too (they were built above).
    lru_bytes += sum(sys.getsizeof(s) for s in names[:1000]) / 1000
    del index, lru
    return seg_bytes, lru_bytes


def results_table(results: dict[str, dict[str, dict[str, float]]], names: list[str], tag: str, title: str) -> Table:
    table = Table(title=title)
    table.add_column("page")
    table.add_column("op")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("segment / SGLang", justify="right")
    table.add_column("segment / one file", justify="right")
    for label, res in results.items():
        for op in OPS:
            key = op + tag
            if all(key not in res.get(n, {}) for n in names):
                continue
            cells = [f"{res[n][key]:.3f}" if key in res.get(n, {}) else "-" for n in names]
            seg, sgl, one = res["segment v1"].get(key), res["SGLang HiCacheFile"].get(key), one_file_limit(res, key)
            if op == "exists":
                vs, limit = fmt_ratio(sgl / seg if seg and sgl else None), ""
            else:
                vs = fmt_ratio(seg / sgl if seg and sgl else None)
                limit = f"{100 * seg / one:.0f} %" if seg and one else ""
            table.add_row(label, op, *cells, vs, limit)
        table.add_section()
    return table


def one_file_limit(res: dict[str, dict[str, float]], key: str) -> float | None:
    """The best of the one-file rows (one thread, and the segment store's thread count)."""
    got = [row[key] for name, row in res.items() if name.startswith("raw one file") and key in row]
    return max(got) if got else None


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median shown)")
    ap.add_argument("--reps", type=int, default=3, help="passes of each op per round, the best kept; 1 MiB: at most 2")
    ap.add_argument("--dir", default=None, help="directory on the disk to test (default: a temp dir in /tmp)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold reads after 'echo 1 > /proc/sys/vm/drop_caches' (root) instead of per-file fadvise")
    ap.add_argument("--sizes", default=",".join(SHAPES),
                    help=f"page sizes to run, comma-separated, of: {', '.join(repr(k) for k in SHAPES)}")
    ap.add_argument("--json", default=None, help="also write the medians to this file (JSON)")
    args = ap.parse_args()
    unknown = [label for label in args.sizes.split(",") if label not in SHAPES]
    if unknown:
        ap.error(f"--sizes: {', '.join(map(repr, unknown))} not known; give some of {', '.join(map(repr, SHAPES))}")
    console = Console(width=max(shutil.get_terminal_size((200, 40)).columns, 170))
    started = time.perf_counter()
    HiCacheFile, SGLConfig, note = import_sglang_file_backend()
    console.print(f"[dim]{note}; cold reads: {'drop_caches' if args.drop_caches else 'fdatasync + posix_fadvise(DONTNEED) per file'}[/]")
    root = tempfile.mkdtemp(prefix="hicache-bench-seg-", dir=args.dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for label in args.sizes.split(","):
            label = label.strip()
            sub = os.path.join(root, label.replace(" ", ""))
            os.makedirs(sub)
            with console.status(f"{label} pages, {args.rounds} rounds"):
                big = label == "1 MiB"  # bounds the bytes written: 128 MiB per set
                reps = min(args.reps, 2) if big else args.reps
                results[label] = run_size(label, sub, args.rounds, reps, (HiCacheFile, SGLConfig), args.drop_caches)
            shutil.rmtree(sub, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    names = ["SGLang HiCacheFile", "pagefile v1", "segment v1", "segment, verify always", "raw per-page files",
             "raw one file"]
    names += sorted({n for res in results.values() for n in res if n.startswith("raw one file,")})
    for tag, title in (
        ("", f"wall clock: {PAGES}-page batches, GiB/s (exists: ms for {PAGES} keys); median over interleaved "
             f"rounds of the best of {args.reps} passes"),
        (" cpu", "the same passes in CPU time of this process (GiB per CPU-second; exists: CPU ms): what each op "
                 "costs, whatever else runs on the machine"),
    ):
        console.print(results_table(results, names, tag, title))
    seg_mem, lru_mem = index_bytes_per_page()
    console.print(f"index memory per stored page: segment {seg_mem:.0f} B; pagefile LRU index {lru_mem:.0f} B "
                  "(tracemalloc, 100,000 pages)")
    if "64 KiB" in results:
        r = results["64 KiB"]
        s, g = r["segment v1"], r["SGLang HiCacheFile"]
        console.print(
            f"targets at 64 KiB: get >= 3x SGLang: {s['get warm'] / g['get warm']:.2f}x warm, "
            f"{s['get cold'] / g['get cold']:.2f}x cold; exists >= 4x: {g['exists'] / s['exists']:.2f}x; "
            f"set >= 1.5x: {s['set'] / g['set']:.2f}x"
        )
    if "1 MiB" in results:
        r = results["1 MiB"]
        s = r["segment v1"]
        pct = {op: 100 * s[op] / (one_file_limit(r, op) or float("inf")) for op in ("get warm", "get cold", "set")}
        console.print(
            f"targets at 1 MiB: get and set >= 90 % of one file (the better of its rows): get {pct['get warm']:.0f} % "
            f"warm, {pct['get cold']:.0f} % cold; set {pct['set']:.0f} %"
        )
    console.print(f"[dim]{time.perf_counter() - started:.0f} s[/]")


if __name__ == "__main__":
    main()
