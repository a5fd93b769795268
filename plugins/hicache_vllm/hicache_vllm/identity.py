"""Who wrote a page: the storage config (model, shard) and the request's page hashes.

Keys are hicache's (``hicache_core.keys``): the page-hash chain over token ids, with vLLM's
block size as the page, stored by every backend under ``{hash}@{pool_namespace}``. The
namespace names model, page format and shard; on top of that the model part carries the engine
tag ``vllm`` (``ENGINE_TAG``), so a page vLLM wrote is never served to SGLang or to hicache's
own pools, and theirs never to vLLM. (The core's namespace has no engine field yet; the model
part is the one place a connector can put it without a core change.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hicache_core.keys import namespace_seed, page_hashes
from hicache_core.spec.config import HiCacheStorageConfig

ENGINE_TAG = "vllm"


def engine_model_name(model_id: str) -> str:
    """The ``model_name`` handed to the backend: ``vllm/<model id>`` (namespace ``vllm-<model>``)."""
    return f"{ENGINE_TAG}/{model_id}"


def storage_config(
    model_id: str, backend_config: dict[str, Any], tp_rank: int = 0, tp_size: int = 1,
    pp_rank: int = 0, pp_size: int = 1,
) -> HiCacheStorageConfig:
    """The backend's config for one vLLM rank (MHA, page-contiguous staging pool)."""
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank, pp_size=pp_size,
        is_mla_model=False, is_page_first_layout=True,
        model_name=engine_model_name(model_id), extra_config=dict(backend_config),
    )


def request_seed(cache_salt: str | None) -> str | None:
    """The prior hash of a request's first page: vLLM's ``cache_salt`` (salted prefixes never
    match unsalted ones, as in vLLM's own prefix cache), or None."""
    return namespace_seed(cache_salt) if cache_salt else None


def extend_hashes(hashes: list[str], token_ids: Sequence[int], page_size: int, upto_pages: int,
                  seed: str | None) -> list[str]:
    """``hashes`` extended in place to the first ``upto_pages`` full pages of ``token_ids``."""
    upto = min(upto_pages, len(token_ids) // page_size)
    if len(hashes) >= upto:
        return hashes
    start = len(hashes)
    prior = hashes[-1] if hashes else seed
    tail = token_ids[start * page_size : upto * page_size]
    hashes.extend(page_hashes(list(tail), page_size, prior_hash=prior))
    return hashes
