"""Small helpers shared by hicache-nixl's tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hicache_core import HiCacheStorageConfig, HostKVPool, create_backend
from hicache_core.memory.pages import read_flat_page
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.processes import free_port

__all__ = ["ACCESS_KEY", "SECRET_KEY", "S3Server", "assert_round_trip", "fill", "free_port", "make_pool", "open_nixl", "page_bytes", "read_pages"]


def make_pool(pages: int = 64, page_size: int = 16, layout: str = "page_first", is_mla: bool = False,
              layer_num: int = 2, head_num: int = 2, head_dim: int = 8,
              dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    return HostKVPool(size=pages * page_size, page_size=page_size, layer_num=layer_num, head_num=head_num,
                      head_dim=head_dim, dtype=dtype, layout=layout, is_mla=is_mla)


def open_nixl(extra: dict[str, Any], pool: HostKVPool | None = None, **config: Any) -> HiCacheStorage:
    cfg = HiCacheStorageConfig(model_name=config.pop("model_name", "test-model"), extra_config=extra, **config)
    return create_backend("nixl", cfg, mem_pool_host=pool)


def fill(pool: HostKVPool, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
    """Allocate n pages and write random bytes into them; returns indices and the bytes."""
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None
    gen = torch.Generator().manual_seed(seed)
    expected = []
    for page in pool.indices_to_pages(idx):
        raw = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8, generator=gen)
        pool.write_page(page, raw.view(pool.dtype))
        expected.append(page_bytes(pool, page))
    return idx, expected


def page_bytes(pool: HostKVPool, page: int) -> bytes:
    """A page's stored bytes: the core's flat page (``hicache_core.memory.pages``)."""
    return bytes(read_flat_page(pool, page).view(torch.uint8).numpy())


def read_pages(pool: HostKVPool, idx: torch.Tensor) -> list[bytes]:
    return [page_bytes(pool, p) for p in pool.indices_to_pages(idx)]


def assert_round_trip(store: HiCacheStorage, pool: HostKVPool, n: int, seed: int, prefix: str) -> None:
    """Store ``n`` fresh pages with ``batch_set_v1``, load them into other host pages, compare the bytes."""
    idx, expected = fill(pool, n, seed)
    keys = [f"{prefix}{i}" for i in range(n)]
    assert store.batch_set_v1(keys, idx) == [True] * n
    dest = pool.alloc(n * pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(keys, dest) == [True] * n
    assert read_pages(pool, dest) == expected


ACCESS_KEY = "hicache-test"
SECRET_KEY = "hicache-test-secret"


@dataclass
class S3Server:
    endpoint: str
    pid: int

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def obj_config(self, bucket: str, **extra: Any) -> dict[str, Any]:
        return {"plugin": "OBJ", "bucket": bucket, "endpoint": self.endpoint, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, "region": "us-east-1", "max_attempts": 2, **extra}
