"""Plugin vs raw Mooncake: batch set/get GiB/s and exists latency, same data, same cluster.

Starts its own cluster on 127.0.0.1 (metadata server, master, one storage node) with
``hicache_mooncake.cluster``, opens one ``MooncakeStore`` (contributing no memory, so every
byte crosses TCP to the storage node), and for each page size times, interleaved round by
round:

- raw:    ``batch_put_from`` / ``batch_get_into`` / ``batch_is_exist`` of the store's own
          client on the registered host pool, keys and addresses computed beforehand;
- plugin: ``batch_set_v1`` / ``batch_get_v1`` / ``exists_many`` of the backend on the same
          pool pages and the same bytes.

Every write round uses new keys (a duplicate put is free in Mooncake and would flatter both).
The table puts this machine's memcpy bandwidth beside the figures as the physical ceiling.

The raw side makes the very Mooncake call the plugin makes (``batch_put_from`` for
page layouts, ``batch_put_from_multi_buffers`` for ``layer_first``), with the addresses
computed beforehand from the same ``PagePieces`` plan.

    python plugins/hicache_mooncake/bench/bench_mooncake.py [--rounds 15] [--batch-pages 128]
        [--layout page_first|page_first_direct|layer_first] [--scheme hicache|sglang]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hicache_mooncake.cluster import LocalMooncakeCluster
from hicache_mooncake.objects import objects_per_call
from hicache_mooncake.store import MooncakeStore
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool

GiB = 1024**3

#: page label -> (tokens per page, layers, heads, head_dim); bf16, MHA (K and V).
GEOMETRIES: dict[str, tuple[int, int, int, int]] = {
    "64KiB": (16, 8, 8, 16),
    "1MiB": (64, 16, 8, 32),
}


@dataclass
class Row:
    page: str
    op: str
    raw: float  # median
    plugin: float  # median
    unit: str
    raw_best: float
    plugin_best: float
    plugin_cpu_us: float  # the plugin's own work per call, before Mooncake is called

    @staticmethod
    def _ratio(raw: float, plugin: float, unit: str) -> float:
        if unit == "GiB/s":
            return plugin / raw if raw else 0.0
        return raw / plugin if plugin else 0.0  # latency: lower is better

    @property
    def ratio(self) -> float:
        return self._ratio(self.raw, self.plugin, self.unit)

    @property
    def ratio_best(self) -> float:
        return self._ratio(self.raw_best, self.plugin_best, self.unit)


def memcpy_gibs(nbytes: int = 256 * 1024**2, repeats: int = 5) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / GiB


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def bench_page(store_cfg: HiCacheStorageConfig, label: str, rounds: int, batch: int, progress: Progress,
               layout: str = "page_first") -> list[Row]:
    tokens, layers, heads, dim = GEOMETRIES[label]
    pool = HostKVPool(2 * batch * tokens, tokens, layers, heads, dim, torch.bfloat16, layout)
    pool.kv_buffer.view(torch.uint8).random_()
    store = MooncakeStore(store_cfg)
    try:
        store.register_mem_pool_host(pool)
        raw = store.raw_client
        src = pool.pages_to_indices(range(batch))
        dst = pool.pages_to_indices(range(batch, 2 * batch))
        pieces = store.pieces
        assert pieces is not None
        src_plan, dst_plan = pieces.plan(src), pieces.plan(dst)
        multi = not isinstance(src_plan.ptrs[0], int)
        # The same calls the plugin makes: multi-buffer batches split as it splits them.
        step = objects_per_call(src_plan.ptrs, len(src_plan.ptrs))
        put_one = raw.batch_put_from_multi_buffers if multi else raw.batch_put_from
        get_one = raw.batch_get_into_multi_buffers if multi else raw.batch_get_into

        def put_op(keys: list[str], ptrs: list[Any], sizes: list[Any]) -> list[int]:
            return [rc for i in range(0, len(keys), step) for rc in put_one(keys[i : i + step], ptrs[i : i + step], sizes[i : i + step])]

        def get_op(keys: list[str], ptrs: list[Any], sizes: list[Any]) -> list[int]:
            return [rc for i in range(0, len(keys), step) for rc in get_one(keys[i : i + step], ptrs[i : i + step], sizes[i : i + step])]

        src_ptrs, dst_ptrs, sizes = src_plan.ptrs, dst_plan.ptrs, src_plan.sizes
        want = [src_plan.object_nbytes] * len(sizes)
        nbytes = batch * pool.page_bytes
        times: dict[str, list[float]] = {k: [] for k in ("raw_set", "plugin_set", "raw_get", "plugin_get", "raw_exists", "plugin_exists")}
        task = progress.add_task(f"{label} pages x{batch}", total=rounds)
        for r in range(rounds + 1):  # round 0 warms connections up and is not counted
            raw_keys = [f"raw-{uuid.uuid4().hex}-{i}" for i in range(batch)]
            plug_keys = [f"plug-{uuid.uuid4().hex}-{i}" for i in range(batch)]
            raw_obj = store.object_keys(raw_keys)
            order = [("raw", raw_keys), ("plugin", plug_keys)]
            if r % 2:
                order.reverse()  # alternate who goes first
            for who, keys in order:
                if who == "raw":
                    t, rcs = _timed(put_op, raw_obj, src_ptrs, sizes)
                    assert all(rc == 0 for rc in rcs), f"raw put failed: {set(rcs)}"
                    t2, rcs = _timed(get_op, raw_obj, dst_ptrs, sizes)
                    assert list(rcs) == want, f"raw get failed: {sorted(set(rcs))}"
                    t3, ex = _timed(raw.batch_is_exist, raw_obj)
                    assert all(e == 1 for e in ex)
                else:
                    t, ok = _timed(store.batch_set_v1, keys, src)
                    assert all(ok), f"plugin set failed: {store.get_stats()['errors']}"
                    t2, ok = _timed(store.batch_get_v1, keys, dst)
                    assert all(ok), f"plugin get failed: {store.get_stats()['errors']}"
                    t3, ex = _timed(store.exists_many, keys)
                    assert all(ex)
                if r:
                    times[f"{who}_set"].append(t)
                    times[f"{who}_get"].append(t2)
                    times[f"{who}_exists"].append(t3)
            # Same bytes landed: the last pages read equal the pages written.
            assert torch.equal(pool.read_page(batch).view(torch.uint8), pool.read_page(0).view(torch.uint8))
            _drop(store, raw_keys + plug_keys)
            if r:
                progress.advance(task)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        cpu_io, cpu_exists = _plugin_cpu_us(store, pool, src, batch)

        def gibs(t: float) -> float:
            return nbytes / t / GiB

        return [
            Row(label, f"batch set ({batch} pages)", gibs(med["raw_set"]), gibs(med["plugin_set"]), "GiB/s",
                gibs(best["raw_set"]), gibs(best["plugin_set"]), cpu_io),
            Row(label, f"batch get ({batch} pages)", gibs(med["raw_get"]), gibs(med["plugin_get"]), "GiB/s",
                gibs(best["raw_get"]), gibs(best["plugin_get"]), cpu_io),
            Row(label, f"exists ({batch} pages)", med["raw_exists"] * 1e3, med["plugin_exists"] * 1e3, "ms",
                best["raw_exists"] * 1e3, best["plugin_exists"] * 1e3, cpu_exists),
        ]
    finally:
        store.close()


def _plugin_cpu_us(store: MooncakeStore, pool: HostKVPool, indices: torch.Tensor, batch: int) -> tuple[float, float]:
    """Microseconds of the plugin's own work per call: page addresses + object keys (I/O),
    object keys (exists). Deterministic, unlike the transfer times on a shared machine."""
    keys = [f"cpu-{i:06d}" for i in range(batch)]
    pieces = store.pieces
    assert pieces is not None
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        pieces.plan(indices)
        store.object_keys(keys)
    io = (time.perf_counter() - t) / reps * 1e6
    t = time.perf_counter()
    for _ in range(reps):
        store.object_keys(keys)
    return io, (time.perf_counter() - t) / reps * 1e6


def _drop(store: MooncakeStore, keys: list[str]) -> None:
    """Free the round's objects so the storage node never fills. Forced past the read leases:
    every read of them has returned, so nothing can still be transferring them."""
    rcs = store.raw_client.batch_remove(store.object_keys(keys), True)
    assert all(rc in (0, -704) for rc in rcs), f"removing the round's objects failed: {sorted(set(rcs))}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per page size (median reported)")
    ap.add_argument("--batch-pages", type=int, default=128, help="pages per batch call (SGLang uses up to 128)")
    ap.add_argument("--pages", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    ap.add_argument("--segment-size", default="1GB", help="storage node memory (Mooncake size syntax)")
    ap.add_argument("--layout", default="page_first", choices=["page_first", "page_first_direct", "layer_first"])
    ap.add_argument("--scheme", default="hicache", choices=["hicache", "sglang"], help="object names (see naming.py)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    limit = memcpy_gibs()
    rows: list[Row] = []
    with LocalMooncakeCluster(segment_size=args.segment_size, lease_ttl_ms=10_000) as cluster:
        extra = {**cluster.extra_config(local_buffer_size="64mb"), "scheme": args.scheme}
        with Progress(console=console, transient=True) as progress:
            for label in args.pages:
                # a model name per page size: under scheme sglang each geometry is its own namespace
                cfg = HiCacheStorageConfig(model_name=f"bench-{label}", extra_config=extra)
                rows.extend(bench_page(cfg, label, args.rounds, args.batch_pages, progress, args.layout))
    table = Table(title=f"hicache-mooncake vs raw MooncakeDistributedStore ({args.layout}, scheme {args.scheme}; "
                        f"TCP over loopback, median of {args.rounds})")
    cols = ("page", "operation", "raw (median)", "plugin (median)", "plugin / raw", "plugin / raw (best)",
            "plugin CPU / call", "memcpy limit")
    for col in cols:
        table.add_column(col, justify="left" if col in ("page", "operation") else "right")

    def pct(r: float) -> str:
        style = "green" if r >= 0.95 else "yellow" if r >= 0.85 else "red"
        return f"[{style}]{r * 100:.0f}%[/]"

    for row in rows:
        table.add_row(
            row.page, row.op, f"{row.raw:.2f} {row.unit}", f"{row.plugin:.2f} {row.unit}",
            pct(row.ratio), pct(row.ratio_best), f"{row.plugin_cpu_us:.0f} us",
            f"{limit:.1f} GiB/s" if row.unit == "GiB/s" else "",
        )
    console.print(table)
    console.print(
        "plugin / raw: throughput ratio for set/get, raw latency / plugin latency for exists; aim >= 95%.\n"
        "plugin CPU / call: the plugin's own work before Mooncake is called (page addresses, object keys)."
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"memcpy_gibs": limit, "rows": [
                row.__dict__ | {"ratio": row.ratio, "ratio_best": row.ratio_best} for row in rows
            ]}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
