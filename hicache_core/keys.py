"""Page keys: SGLang's SHA-256 hash chain over token ids, and the pool namespace.

``key[i] = sha256(raw_digest(key[i-1]) || token ids of page i as uint32 little-endian)``;
the first page is chained from nothing, or from a namespace seed when requests are salted.
The hex digests are byte-identical to SGLang's ``get_hash_str``.

A page hash names tokens, not bytes: the same tokens give different KV bytes under another
model, dtype, geometry, byte order or shard. ``pool_namespace`` names all of those (key schema
``hc1``, docs/key-schema.md); every first-party backend stores a page under
``storage_key(page_hash, namespace)``, so a page from an incompatible pool is a miss.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from hicache_core.spec.config import HiCacheStorageConfig

TokenId = int | tuple[int, ...]


def _update(hasher: hashlib._Hash, token_ids: Iterable[TokenId]) -> None:
    for t in token_ids:
        if isinstance(t, tuple):  # EAGLE bigram keys: each element in turn
            for elem in t:
                hasher.update(int(elem).to_bytes(4, byteorder="little", signed=False))
        else:
            hasher.update(int(t).to_bytes(4, byteorder="little", signed=False))


def get_hash_str(token_ids: Sequence[TokenId], prior_hash: str | None = None) -> str:
    """SGLang's page hash: hex SHA-256 of the prior page's raw digest then the token ids."""
    hasher = hashlib.sha256()
    if prior_hash:
        hasher.update(bytes.fromhex(prior_hash))
    _update(hasher, token_ids)
    return hasher.hexdigest()


def namespace_seed(namespace: str | None) -> str | None:
    """The prior hash that salts a request's first page: a hex digest, or None for no salt.

    A 64-character hex string is used as is; any other string is hashed first.
    """
    if not namespace:
        return None
    try:
        if len(namespace) == 64:
            bytes.fromhex(namespace)
            return namespace.lower()
    except ValueError:
        pass
    return hashlib.sha256(namespace.encode()).hexdigest()


def page_hashes(
    token_ids: Sequence[TokenId], page_size: int, namespace: str | None = None, prior_hash: str | None = None
) -> list[str]:
    """The hash of every *full* page of ``token_ids``, chained from ``prior_hash`` or the seed.

    A trailing partial page has no key (it is never stored).
    """
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    prior = prior_hash if prior_hash is not None else namespace_seed(namespace)
    out: list[str] = []
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        prior = get_hash_str(token_ids[start : start + page_size], prior)
        out.append(prior)
    return out


#: The version of the key schema below; bumped whenever a key it builds would change.
KEY_SCHEMA = "hc1"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def model_tag(model_name: str | None) -> str:
    """The model part of a namespace: the name with every character outside ``[A-Za-z0-9._-]``
    replaced by ``-`` (``meta-llama/Llama-3.1-8B`` -> ``meta-llama-Llama-3.1-8B``); ``-`` if none."""
    return _UNSAFE.sub("-", model_name) if model_name else "-"


def shard_tag(config: HiCacheStorageConfig, kind: str) -> str:
    """The shard part of a namespace: which slice of the model's KV this rank holds.

    ``tp{rank}of{size}`` for MHA (each TP rank holds its heads; MLA ranks hold the same KV and
    have no TP part), then ``pp{rank}of{size}``, ``cp{rank}of{size}`` (attention context
    parallel: disjoint slices of every page) and ``dcp{rank}of{size}`` where those are > 1.
    """
    parts = [] if kind == "mla" else [f"tp{config.tp_rank}of{config.tp_size}"]
    if config.pp_size > 1:
        parts.append(f"pp{config.pp_rank}of{config.pp_size}")
    if config.attn_cp_size > 1:
        parts.append(f"cp{config.attn_cp_rank}of{config.attn_cp_size}")
    if config.dcp_size > 1:
        parts.append(f"dcp{config.dcp_rank}of{config.dcp_size}")
    return "-".join(parts) or "all"


def pool_namespace(config: HiCacheStorageConfig, pool: Any | None, pool_name: str | None = None) -> str:
    """The namespace of the pages of ``pool`` under ``config``: ``hc1.{model}.{format}.{shard}``.

    ``format`` is ``PageFormat.tag()`` (kind, dtype, geometry, page size, byte order); without a
    pool (flat pages handed in by the caller) it is ``flat``, which no pool's pages match.
    A sidecar pool of the v2 API (``pool_name`` other than ``kv``) adds ``.{pool_name}``.
    """
    if pool is None:
        kind = "mla" if config.is_mla_model else "mha"
        fmt = "flat"
    else:
        from hicache_core.memory.pages import page_format

        pf = page_format(pool)
        kind, fmt = pf.kind, pf.tag()
    ns = f"{KEY_SCHEMA}.{model_tag(config.model_name)}.{fmt}.{shard_tag(config, kind)}"
    if pool_name and pool_name != "kv":
        ns += f".{model_tag(pool_name)}"
    return ns


def sidecar_page_hash(page_hash: str, pool_name: str, pool: Any, config: HiCacheStorageConfig) -> str:
    """The hash a v2 sidecar pool's page is stored under, inside the KV pool's namespace.

    ``{page_hash}.{pool_name}.{format}.{shard}``: the sidecar's own format (a Mamba state is
    not KV) and its TP shard (states are TP-sharded even where MLA KV is replicated). Backends
    store it with ``page_key`` like any page hash, so it lands beside the KV page it belongs to.
    """
    from hicache_core.memory.pages import page_format

    return f"{page_hash}.{model_tag(pool_name)}.{page_format(pool).tag()}.{shard_tag(config, 'mha')}"


def storage_key(page_hash: str, namespace: str) -> str:
    """The key a page is stored under: ``{page_hash}@{namespace}``."""
    return f"{page_hash}@{namespace}"
