"""Child process for the torn-write test: writes one page and stops half way.

Run as ``python file_torn_writer.py DIR KEY SEED STAGE``. It fills a host-pool page from SEED,
sets the store's hook for STAGE to announce ``PAUSED`` and sleep, and writes the page under KEY;
the test kills it with SIGKILL while it sleeps. STAGE ``mid_write``: between the two halves of
the temporary file's write; ``before_rename``: after the old page was removed, before the new
one is renamed into place.
"""

from __future__ import annotations

import sys
import time

import torch
from hicache_file import pagefile as store_module
from hicache_file.store import FileStore

from hicache_core import HiCacheStorageConfig, HostKVPool

POOL_SHAPE = {"size": 64, "page_size": 16, "layer_num": 2, "head_num": 2, "head_dim": 8}


def make_pool() -> HostKVPool:
    return HostKVPool(dtype=torch.bfloat16, layout="page_first", **POOL_SHAPE)


def page_bytes_for(seed: int, nbytes: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)


def main() -> None:
    root, key, seed, stage = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = FileStore(HiCacheStorageConfig(model_name="torn", extra_config={"path": root, "io_threads": 1}))
    pool = make_pool()
    store.register_mem_pool_host(pool)
    idx = pool.alloc(pool.page_size)
    assert idx is not None
    pool.write_page(0, page_bytes_for(seed, pool.page_bytes).view(pool.dtype))

    def pause() -> None:
        print("PAUSED", flush=True)
        time.sleep(120)

    if stage == "mid_write":
        store_module.MID_WRITE_HOOK = pause
    elif stage == "before_rename":
        store_module.BEFORE_RENAME_HOOK = pause
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    store.batch_set_v1([key], idx)
    print("FINISHED", flush=True)  # never reached when the test kills us


if __name__ == "__main__":
    main()
