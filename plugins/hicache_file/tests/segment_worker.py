"""Child process for the segment scheme's crash and sharing tests (a real process, killed or not).

``python segment_worker.py DIR MODE SEED N [EXTRA_JSON]``:

- ``mid_write``: store N pages filled from SEED, pausing (``PAUSED`` on stdout, then sleep) in
  the middle of the data write; the test SIGKILLs it there.
- ``mid_append``: the same, pausing in the middle of the journal append (after one and a half
  records reached the journal).
- ``share``: store N pages from SEED, print ``WROTE``, then read the pages of every seed given
  in EXTRA_JSON's ``"read_seeds"`` (waiting up to 60 s for them to appear), check each page's
  bytes, print ``OK`` (or ``BAD ...`` and exit 1).
"""

from __future__ import annotations

import json
import sys
import time

import torch
from hicache_file.segment import journal as journal_module
from hicache_file.segment import store as store_module
from hicache_file.segment.store import SegmentStore

from hicache_core import HiCacheStorageConfig, HostKVPool

POOL_SHAPE = {"size": 64 * 16, "page_size": 16, "layer_num": 2, "head_num": 2, "head_dim": 8}
MODEL = "seg"


def make_pool() -> HostKVPool:
    return HostKVPool(dtype=torch.bfloat16, layout="page_first", **POOL_SHAPE)


def page_bytes_for(seed: int, i: int, nbytes: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 100003 + i)
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)


def keys_for(seed: int, n: int) -> list[str]:
    return [f"{seed:08x}{i:056x}"[::-1] for i in range(n)]


def open_store(root: str, **extra: object) -> tuple[SegmentStore, HostKVPool]:
    store = SegmentStore(HiCacheStorageConfig(model_name=MODEL, extra_config={"path": root, **extra}))
    pool = make_pool()
    store.register_mem_pool_host(pool)
    return store, pool


def fill(pool: HostKVPool, seed: int, n: int) -> torch.Tensor:
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    for i, page in enumerate(pool.indices_to_pages(idx)):
        pool.write_page(page, page_bytes_for(seed, i, pool.page_bytes).view(pool.dtype))
    return idx


def read_ok(store: SegmentStore, pool: HostKVPool, seed: int, n: int) -> list[bool]:
    """Per page: read back and equal to what ``seed`` wrote."""
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    try:
        got = store.batch_get_v1(keys_for(seed, n), idx)
        out = []
        for i, (hit, page) in enumerate(zip(got, pool.indices_to_pages(idx))):
            if hit and not torch.equal(pool.read_page(page).view(torch.uint8), page_bytes_for(seed, i, pool.page_bytes)):
                print(f"BAD page {i} of seed {seed}", flush=True)
                sys.exit(1)
            out.append(hit)
        return out
    finally:
        pool.free(idx)


def main() -> None:
    root, mode, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    store, pool = open_store(root, **extra.get("config", {}))
    idx = fill(pool, seed, n)

    def pause() -> None:
        print("PAUSED", flush=True)
        time.sleep(120)

    if mode == "mid_write":
        store_module.MID_WRITE_HOOK = pause
    elif mode == "mid_append":
        journal_module.MID_APPEND_HOOK = pause
    elif mode != "share":
        raise SystemExit(f"unknown mode {mode!r}")
    result = store.batch_set_v1(keys_for(seed, n), idx)
    if mode != "share":
        print("FINISHED", flush=True)  # never reached when the test kills us
        return
    assert result == [True] * n, result
    print("WROTE", flush=True)
    deadline = time.monotonic() + 60
    for other in extra.get("read_seeds", []):
        while not all(read_ok(store, pool, other, n)):
            if time.monotonic() > deadline:
                print(f"BAD seed {other} never fully visible", flush=True)
                sys.exit(1)
            time.sleep(0.02)
    store.close()
    print("OK", flush=True)


if __name__ == "__main__":
    main()
