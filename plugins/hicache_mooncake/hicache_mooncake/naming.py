"""Mooncake object names of a page, under the two key schemes.

A page is one object (MLA) or two (MHA: the K half then the V half of the stored page,
``hicache_core.memory.pages``); the schemes differ only in the names:

``hicache`` (default)
    ``{page_key}_k`` / ``{page_key}_v`` (MHA) or ``{page_key}`` (MLA), where ``page_key`` is
    ``hicache_core.keys.storage_key(hash, namespace)`` = ``{hash}@hc1.{model}.{format}.{shard}``.
    The namespace names model, dtype, geometry, byte order and shard, so a page from an
    incompatible pool is a different object: a miss, never a wrong hit.

``sglang``
    SGLang 0.5.23's own ``MooncakeStore`` names (``storage/mooncake_store/mooncake_store.py``):
    ``{prefix}_{hash}_{tp_rank}[_{pp_rank}]_k`` / ``_v`` (MHA) and
    ``{prefix}_{hash}_[{pp_rank}]_k`` (MLA), ``prefix`` = ``[extra_backend_tag_]{model with / as -}``
    (no prefix and no ``_`` when both are empty). These names carry no dtype, layout, TP size or
    attention-CP rank, so ``format_record`` guards them (with attention CP, one CP rank owns a
    namespace and the others miss). Split heads and DCP are refused here (not implemented).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hicache_core.keys import storage_key
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError

SCHEMES: tuple[str, ...] = ("hicache", "sglang")
#: The page name a format record takes the place of (never a page hash: hashes are hex).
FORMAT_RECORD_NAME = "hicache-format"


def scheme_of(extra: dict[str, Any]) -> str:
    """The key scheme named by the extra-config key ``scheme`` (default ``hicache``)."""
    value = extra.get("scheme")
    if value is None or value == "":
        return "hicache"
    if not isinstance(value, str) or value.strip().lower() not in SCHEMES:
        raise BackendConfigError(
            f"mooncake: scheme={value!r} (from extra-config) is invalid: expected one of "
            f"{', '.join(SCHEMES)} (sglang = SGLang 0.5.23's Mooncake object names and bytes)"
        )
    return value.strip().lower()


@dataclass(frozen=True)
class PageObjectNames:
    """How one scheme names the objects of a page; ``tails`` follow the (tagged) page name."""

    scheme: str
    #: Put before every page hash (``{prefix}_`` for SGLang's tagged keys, else empty).
    head: str
    #: Put after the page hash or page key, one per object of a page, in stored-byte order.
    tails: tuple[str, ...]
    #: hicache scheme: the key namespace (``page_key = {hash}@{namespace}``); empty for sglang.
    namespace: str = ""

    @property
    def parts(self) -> int:
        """Objects per page: 2 for MHA (K, V), 1 for MLA."""
        return len(self.tails)

    def page_name(self, key: str) -> str:
        if self.namespace:
            return storage_key(key, self.namespace)
        return self.head + key

    def objects(self, keys: Sequence[str]) -> list[str]:
        """The object names of ``keys``, page by page (K then V for MHA)."""
        tails = self.tails
        if self.namespace:
            ns = "@" + self.namespace
            return [k + ns + t for k in keys for t in tails]
        head = self.head
        return [head + k + t for k in keys for t in tails]

    def record_key(self) -> str:
        """The reserved object holding this namespace's format record (sglang scheme)."""
        return self.head + FORMAT_RECORD_NAME + self.tails[0]


def hicache_names(namespace: str, is_mla: bool) -> PageObjectNames:
    """Names in hicache's own scheme, under ``namespace`` (``HiCacheStorage.namespace``)."""
    return PageObjectNames("hicache", "", ("",) if is_mla else ("_k", "_v"), namespace)


def sglang_prefix(config: HiCacheStorageConfig) -> str | None:
    """SGLang's ``MooncakeStore.config_prefix``: ``[extra_backend_tag_]{model}``, or None."""
    extra = config.extra()
    parts: list[str] = []
    if extra.get("extra_backend_tag") is not None:
        parts.append(str(extra["extra_backend_tag"]))
    if config.model_name:
        parts.append("-".join(config.model_name.split("/")))
    return "_".join(parts) if parts else None


def sglang_names(config: HiCacheStorageConfig) -> PageObjectNames:
    """Names exactly as SGLang 0.5.23's ``MooncakeStore`` builds them for ``config``.

    Raises ``BackendConfigError`` for the shardings this scheme does not implement (DCP, split
    heads).
    """
    if config.dcp_size > 1:
        raise BackendConfigError(
            f"mooncake: scheme 'sglang' does not support decode context parallelism (dcp_size="
            f"{config.dcp_size}) yet (SGLang's DCP names and logical pages); use scheme 'hicache'"
        )
    if config.should_split_heads:
        raise BackendConfigError(
            "mooncake: scheme 'sglang' does not support should_split_heads (per-head-group "
            "objects); use scheme 'hicache'"
        )
    prefix = sglang_prefix(config)
    head = f"{prefix}_" if prefix is not None else ""
    pp = config.pp_size > 1
    if config.is_mla_model:
        mla_suffix = f"{config.pp_rank}" if pp else ""
        return PageObjectNames("sglang", head, (f"_{mla_suffix}_k",))
    mha_suffix = f"{config.tp_rank}_{config.pp_rank}" if pp else f"{config.tp_rank}"
    return PageObjectNames("sglang", head, (f"_{mha_suffix}_k", f"_{mha_suffix}_v"))
