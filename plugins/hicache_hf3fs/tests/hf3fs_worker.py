"""A separate process using the hf3fs backend, for the two-process tests.

``python hf3fs_worker.py MODE JSON_ARGS``; prints one JSON line with its findings. Every page's
bytes are a function of its key (its SHA-256 digest, repeated), so a reader can tell a right
page from a page of another key or a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from typing import Any

import torch
from hicache_hf3fs.metadata.index import NEW, SlotRef
from hicache_hf3fs.store import Hf3fsStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool

POOL = {"page_size": 16, "layer_num": 4, "head_num": 4, "head_dim": 64, "dtype": torch.bfloat16}


def page_content(key: str, page_bytes: int) -> bytes:
    digest = hashlib.sha256(key.encode()).digest()
    return (digest * (page_bytes // len(digest) + 1))[:page_bytes]


def open_backend(args: dict[str, Any], pages: int = 64) -> tuple[Hf3fsStore, HostKVPool]:
    extra = {
        "file_path_prefix": args["prefix"], "file_size": args["file_size"], "numjobs": 1,
        "client": "file", "metadata_server_url": args["url"],
    }
    backend = Hf3fsStore(HiCacheStorageConfig(model_name="two-proc", extra_config=extra))
    shape = {**POOL, "head_dim": args.get("head_dim", POOL["head_dim"])}
    pool = HostKVPool(size=pages * shape["page_size"], **shape)  # type: ignore[arg-type]
    backend.register_mem_pool_host(pool)
    return backend, pool


def fill(pool: HostKVPool, keys: list[str]) -> torch.Tensor:
    idx = pool.alloc(len(keys) * pool.page_size)
    assert idx is not None
    for page, key in zip(pool.indices_to_pages(idx), keys):
        raw = torch.frombuffer(bytearray(page_content(key, pool.page_bytes)), dtype=torch.uint8)
        pool.write_page(page, raw.view(pool.dtype))
    return idx


def matches(pool: HostKVPool, idx: torch.Tensor, keys: list[str]) -> list[bool]:
    out = []
    for page, key in zip(pool.indices_to_pages(idx), keys):
        got = bytes(pool.read_page(page).view(torch.uint8).numpy())
        out.append(got == page_content(key, pool.page_bytes))
    return out


def mode_exchange(args: dict[str, Any]) -> dict[str, Any]:
    """Write my pages, then wait for the other process's pages and read them."""
    backend, pool = open_backend(args)
    mine, theirs = args["mine"], args["theirs"]
    stored = backend.batch_set_v1(mine, fill(pool, mine))
    deadline = time.monotonic() + args["timeout"]
    while backend.batch_exists(theirs) < len(theirs) and time.monotonic() < deadline:
        time.sleep(0.02)
    dest = pool.alloc(len(theirs) * pool.page_size)
    assert dest is not None
    got = backend.batch_get_v1(theirs, dest)
    result = {"stored": stored, "read": got, "match": matches(pool, dest, theirs), "stats": backend.get_stats()}
    # Stay until the other side has read my pages too (a shared marker key says so).
    backend.set(f"done-{args['name']}", pool.get_dummy_flat_data_page())
    other = "done-" + args["other"]
    while not backend.exists(other) and time.monotonic() < deadline:
        time.sleep(0.02)
    backend.close()
    return result


def mode_slow_writer(args: dict[str, Any]) -> dict[str, Any]:
    """Allocate a slot, write half of the page, wait for 'go' on stdin, finish and confirm."""
    backend, pool = open_backend(args)
    key = backend.page_key(args["key"])
    pb = pool.page_bytes
    (alloc,) = backend.metadata.allocate([key], [None])
    assert alloc.status == NEW, alloc
    assert backend.io is not None
    content = page_content(args["key"], pb)
    half = memoryview(bytearray(content[: pb // 2]))
    assert backend.io.batch_write([alloc.slot * pb], [[half]]) == [pb // 2]
    print(json.dumps({"state": "half-written", "slot": alloc.slot}), flush=True)
    sys.stdin.readline()
    rest = memoryview(bytearray(content[pb // 2 :]))
    assert backend.io.batch_write([alloc.slot * pb + pb // 2], [[rest]]) == [pb - pb // 2]
    confirmed = backend.metadata.confirm([SlotRef(key, alloc.slot, alloc.gen)], [])
    backend.close()
    return {"state": "confirmed", "confirmed": confirmed}


def mode_churn_writer(args: dict[str, Any]) -> dict[str, Any]:
    """Keep replacing the oldest pages of a small file with new ones, for a while.

    Deleting a page frees its slot and the next write takes that very slot (the free list is
    last-in first-out), so slots are reused as fast as this process can write; when the file
    is full, eviction makes room as well.
    """
    backend, pool = open_backend(args)
    chain, batches, n = args["chain"], 0, 0
    deadline = time.monotonic() + args["seconds"]
    while time.monotonic() < deadline:
        if n >= args["live"]:
            for old in range(n - args["live"], n - args["live"] + chain):
                backend.delete(f"churn-{old}")
        keys = [f"churn-{n + i}" for i in range(chain)]
        idx = fill(pool, keys)
        ok = backend.batch_set_v1(keys, idx)
        pool.free(idx)
        batches += 1
        n += chain
        if not all(ok):
            return {"error": f"write failed: {ok}", "stats": backend.get_stats()}
        # Publish how far the writer got, for the reader to pick live keys.
        with open(args["progress"], "w") as fh:
            fh.write(str(n))
    stats = backend.get_stats()
    backend.close()
    return {"batches": batches, "pages": n, "stats": stats}


def mode_churn_reader(args: dict[str, Any]) -> dict[str, Any]:
    """Read recent pages while the writer evicts and reuses their slots; check every hit."""
    backend, pool = open_backend(args)
    rng = random.Random(7)
    hits = wrong = attempts = 0
    deadline = time.monotonic() + args["seconds"]
    dest = pool.alloc(args["batch"] * pool.page_size)
    assert dest is not None
    while time.monotonic() < deadline:
        try:
            with open(args["progress"]) as fh:
                written = int(fh.read() or 0)
        except (OSError, ValueError):
            written = 0
        if written < args["batch"]:
            time.sleep(0.005)
            continue
        lo = max(0, written - args["window"])
        keys = [f"churn-{rng.randrange(lo, written)}" for _ in range(args["batch"])]
        got = backend.batch_get_v1(keys, dest)
        attempts += len(keys)
        for ok, good in zip(got, matches(pool, dest, keys)):
            hits += ok
            wrong += ok and not good
    stats = backend.get_stats()
    backend.close()
    return {"attempts": attempts, "hits": hits, "wrong": wrong, "stats": stats}


MODES = {
    "exchange": mode_exchange, "slow_writer": mode_slow_writer,
    "churn_writer": mode_churn_writer, "churn_reader": mode_churn_reader,
}

if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
