"""Configuration handed to a backend, with SGLang's field names so backends move unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class HiCacheStorageConfig:
    """Everything a backend learns about the engine it serves.

    The field names are SGLang's (``HiCacheStorageConfig`` in sglang 0.5.x); every field has
    a default so that keyword construction works with any subset.
    """

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    is_mla_model: bool = False
    is_page_first_layout: bool = True
    model_name: str | None = None
    enable_storage_metrics: bool = False
    #: Backend-specific keys (and the controller's prefetch knobs), as given by the operator.
    extra_config: dict[str, Any] | None = field(default=None)
    dp_rank: int = 0
    # Fields later SGLang releases added, with their defaults, for backends that read them.
    tp_lcm_size: int | None = None
    should_split_heads: bool = False
    attn_cp_rank: int = 0
    attn_cp_size: int = 1

    def extra(self) -> dict[str, Any]:
        """``extra_config`` as a dict (never None)."""
        return dict(self.extra_config or {})

    def namespace_suffix(self) -> str:
        """The key suffix that keeps models and shardings apart.

        ``_{model}_{tp_rank}_{tp_size}`` for MHA (``_{pp_rank}_{pp_size}`` appended when
        pipeline-parallel), ``_{model}`` for MLA, whose ranks all hold the same KV. Slashes in
        the model name become dashes so the suffix is safe in file and object names.
        """
        model = (self.model_name or "default").replace("/", "-")
        if self.is_mla_model:
            suffix = f"_{model}"
        else:
            suffix = f"_{model}_{self.tp_rank}_{self.tp_size}"
        if self.pp_size > 1:
            suffix += f"_{self.pp_rank}_{self.pp_size}"
        return suffix

    @property
    def is_writer_rank(self) -> bool:
        """MLA models write from tensor-parallel rank 0 only; MHA ranks each write their shard."""
        return not self.is_mla_model or self.tp_rank == 0


@dataclass
class HiCacheStorageExtraInfo:
    """Per-call context, as SGLang passes it to ``batch_exists`` and the v1 calls."""

    #: Hashes of the pages before this batch in the same request, oldest first.
    prefix_keys: list[str] | None = None
    #: Free-form extra information.
    extra_info: dict[str, Any] | None = None
