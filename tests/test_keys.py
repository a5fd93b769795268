"""Page keys against known vectors computed from the definition (tests/data/page_hash_vectors.json).

The vectors were computed with hashlib and struct alone (not with hicache); the first two were
also checked with ``printf ... | sha256sum``:

    printf '\\x01\\0\\0\\0\\x02\\0\\0\\0\\x03\\0\\0\\0\\x04\\0\\0\\0' | sha256sum
    -> cf97adeedb59e05bfd73a2b4c2a8885708c4f4f70c84c64b27120e72ab733b72
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.keys import get_hash_str, namespace_seed, page_hashes, pool_namespace, storage_key

VECTORS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "data" / "page_hash_vectors.json").read_text())["vectors"]


def _tokens(raw: list[Any]) -> list[Any]:
    return [tuple(t) if isinstance(t, list) else t for t in raw]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_page_hashes_match_known_vectors(vector: dict[str, Any]) -> None:
    got = page_hashes(_tokens(vector["token_ids"]), vector["page_size"], namespace=vector["namespace"],
                      prior_hash=vector["prior_hash"])
    assert got == vector["expected"]


def test_first_vector_by_hand() -> None:
    assert get_hash_str([1, 2, 3, 4]) == "cf97adeedb59e05bfd73a2b4c2a8885708c4f4f70c84c64b27120e72ab733b72"
    assert get_hash_str([5, 6, 7, 8], prior_hash="cf97adeedb59e05bfd73a2b4c2a8885708c4f4f70c84c64b27120e72ab733b72") == (
        "4ebfa8a1f3c341517621838c6e1b9aa350307e3f00b3cbd1a07ef740f54396d6"
    )


def test_chain_depends_on_every_earlier_page() -> None:
    a = page_hashes([1, 2, 3, 4, 5, 6], 2)
    b = page_hashes([1, 9, 3, 4, 5, 6], 2)
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]
    assert page_hashes([1, 2, 3, 4], 2) == a[:2], "a prefix has the same keys"


def test_namespace_salts_the_chain() -> None:
    plain = page_hashes([1, 2, 3, 4], 2)
    salted = page_hashes([1, 2, 3, 4], 2, namespace="tenant-a")
    assert plain != salted and salted != page_hashes([1, 2, 3, 4], 2, namespace="tenant-b")
    assert namespace_seed(None) is None and namespace_seed("") is None
    assert namespace_seed("AB" * 32) == "ab" * 32


def test_bad_page_size() -> None:
    with pytest.raises(ValueError, match="page_size"):
        page_hashes([1, 2], 0)


def test_pool_namespace_names_model_format_and_shard() -> None:
    h = VECTORS[0]["expected"][0]
    pool = HostKVPool(64, 16, 2, 4, 8, dtype=torch.float16, layout="page_first", pin_memory=False)
    ns = pool_namespace(HiCacheStorageConfig(model_name="org/m x", tp_rank=1, tp_size=2), pool)
    assert ns == "hc1.org-m-x.mha-fp16-l2h4d8-p16-ctlhd.tp1of2"
    assert storage_key(h, ns) == f"{h}@{ns}"
    mla = HostKVPool(64, 16, 2, 1, 8, layout="page_first_direct", is_mla=True, pin_memory=False)
    cfg = HiCacheStorageConfig(model_name="m", is_mla_model=True, tp_rank=1, tp_size=2, pp_rank=1, pp_size=2,
                               attn_cp_rank=0, attn_cp_size=2)
    assert pool_namespace(cfg, mla) == "hc1.m.mla-bf16-l2h1d8-p16-lthd.pp1of2-cp0of2"
    assert pool_namespace(HiCacheStorageConfig(), None) == "hc1.-.flat.tp0of1"


def test_every_identity_field_changes_the_namespace() -> None:
    base = {"size": 64, "page_size": 16, "layer_num": 2, "head_num": 4, "head_dim": 8,
            "dtype": torch.bfloat16, "layout": "page_first", "pin_memory": False}
    cfg = HiCacheStorageConfig(model_name="m")
    ref = pool_namespace(cfg, HostKVPool(**base))
    for change in ({"dtype": torch.float16}, {"layer_num": 3}, {"head_num": 2}, {"head_dim": 16},
                   {"page_size": 32}, {"layout": "layer_first"}, {"layout": "page_head"}):
        assert pool_namespace(cfg, HostKVPool(**{**base, **change})) != ref, change
    # layer_first and page_first_direct pages are the same bytes, so they share a namespace.
    lf = pool_namespace(cfg, HostKVPool(**{**base, "layout": "layer_first"}))
    assert lf == pool_namespace(cfg, HostKVPool(**{**base, "layout": "page_first_direct"}))
    pool = HostKVPool(**base)
    for other in (HiCacheStorageConfig(model_name="m2"), HiCacheStorageConfig(model_name="m", tp_rank=1, tp_size=2),
                  HiCacheStorageConfig(model_name="m", tp_size=2), HiCacheStorageConfig(model_name="m", pp_size=2),
                  HiCacheStorageConfig(model_name="m", attn_cp_rank=1, attn_cp_size=2)):
        assert pool_namespace(other, pool) != ref, other
