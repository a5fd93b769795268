"""Configuration handed to a backend: SGLang 0.5.23's ``HiCacheStorageConfig``, field for field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HiCacheStorageConfig:
    """Everything a backend learns about the engine it serves.

    Fields, their order and their validation are sglang 0.5.23's ``HiCacheStorageConfig``
    (so positional construction means the same in both), except that every field has a
    default, so keyword construction works with any subset.
    """

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    attn_cp_rank: int = 0
    attn_cp_size: int = 1
    is_mla_model: bool = False
    enable_storage_metrics: bool = False
    is_page_first_layout: bool = True
    model_name: str | None = None
    tp_lcm_size: int | None = None
    should_split_heads: bool = False
    #: With DP attention, tp_rank is attention-group-local; dp_rank disambiguates.
    dp_rank: int = 0
    #: Backend-specific keys (and the controller's prefetch knobs), as given by the operator.
    extra_config: dict[str, Any] | None = field(default=None)
    dcp_size: int = 1
    dcp_rank: int = 0
    logical_page_size: int | None = None

    def __post_init__(self) -> None:
        # SGLang's decode-context-parallel rules, with its meaning and a message that says what to fix.
        if self.dcp_size < 1 or not 0 <= self.dcp_rank < self.dcp_size:
            raise ValueError(
                f"invalid DCP shard: dcp_rank {self.dcp_rank} of dcp_size {self.dcp_size} "
                "(need dcp_size >= 1 and 0 <= dcp_rank < dcp_size)"
            )
        if self.dcp_size == 1:
            return
        if not self.is_mla_model:
            raise ValueError("DCP storage shards need an MLA model (is_mla_model=True)")
        if self.tp_size % self.dcp_size or not 0 <= self.tp_rank < self.tp_size or (
            self.tp_rank % self.dcp_size != self.dcp_rank
        ):
            raise ValueError(
                f"DCP storage needs contiguous DCP groups within TP: tp_rank {self.tp_rank} of "
                f"{self.tp_size} cannot be dcp_rank {self.dcp_rank} of {self.dcp_size}"
            )
        if not self.logical_page_size or self.logical_page_size % self.dcp_size:
            raise ValueError(
                f"DCP storage needs logical_page_size divisible by dcp_size {self.dcp_size}, "
                f"got {self.logical_page_size}"
            )

    @classmethod
    def from_any(cls, obj: Any) -> HiCacheStorageConfig:
        """hicache's config from any object with SGLang's field names (SGLang's own config, say).

        Missing fields take their defaults; an object of this class is returned as it is.
        """
        if isinstance(obj, cls):
            return obj
        if obj is None:
            return cls()
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if hasattr(obj, f.name)}
        if isinstance(values.get("extra_config"), dict):
            values["extra_config"] = dict(values["extra_config"])
        return cls(**values)

    def extra(self) -> dict[str, Any]:
        """``extra_config`` as a dict (never None)."""
        return dict(self.extra_config or {})

    @property
    def is_storage_writer(self) -> bool:
        """SGLang's rule: MLA replicas share one writer per DCP shard; MHA ranks each write."""
        return not self.is_mla_model or self.tp_rank == self.dcp_rank

    @property
    def is_writer_rank(self) -> bool:
        """The same as ``is_storage_writer`` (hicache's earlier name)."""
        return self.is_storage_writer

    def shard_suffix(self) -> str:
        """SGLang's pipeline / attention-CP part of a page-file suffix (empty when neither)."""
        suffix = f"_{self.pp_size}_{self.pp_rank}" if self.pp_size > 1 else ""
        if self.attn_cp_size > 1:
            suffix += f"_cp{self.attn_cp_rank}_{self.attn_cp_size}"
        return suffix

    def namespace_suffix(self) -> str:
        """SGLang 0.5.23 ``HiCacheFile``'s key suffix (its page files are ``<key><suffix>.bin``).

        ``_{model}_{tp_rank}_{tp_size}`` for MHA, ``_{model}`` for MLA, then ``_{pp_size}_{pp_rank}``
        with PP, ``_cp{rank}_{size}`` with attention CP and the DCP part with DCP; slashes in
        the model name become dashes. It names model and shard, not dtype or layout: hicache's
        own key namespace is ``hicache_core.keys.pool_namespace``.
        """
        model = "-".join(self.model_name.split("/")) if self.model_name else ""
        shard = self.shard_suffix()
        suffix = f"_{model}{shard}" if self.is_mla_model else f"_{model}_{self.tp_rank}_{self.tp_size}{shard}"
        if self.dcp_size > 1:
            suffix += f"_tp{self.tp_size}_dcp{self.dcp_rank}_{self.dcp_size}_page{self.logical_page_size}"
        return suffix


@dataclass
class HiCacheStorageExtraInfo:
    """Per-call context, as SGLang passes it to ``batch_exists`` and the v1 calls."""

    #: Hashes of the pages before this batch in the same request, oldest first.
    prefix_keys: list[str] | None = None
    #: Free-form extra information.
    extra_info: dict[str, Any] | None = None
