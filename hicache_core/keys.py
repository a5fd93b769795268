"""Page keys: SGLang's SHA-256 hash chain over token ids, plus the model/rank namespace.

``key[i] = sha256(raw_digest(key[i-1]) || token ids of page i as uint32 little-endian)``;
the first page is chained from nothing, or from a namespace seed when requests are salted.
The hex digests are byte-identical to SGLang's ``get_hash_str``, so an L3 filled by one can be
read by the other. Backends append ``HiCacheStorageConfig.namespace_suffix()`` when they
store, so different models or shardings never read each other's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

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


def storage_key(page_hash: str, config: HiCacheStorageConfig) -> str:
    """The key a backend stores a page under: the hash plus the model/rank suffix."""
    return page_hash + config.namespace_suffix()
