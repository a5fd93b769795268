"""Model shapes the reference node can pretend to serve: named presets and custom shapes.

Only the KV shape matters to the cache: layers, KV heads, head dim, dtype and MHA vs MLA
decide the bytes of one token (``bytes_per_token``) and so how many tokens each tier holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "uint8": torch.uint8,
}


@dataclass(frozen=True)
class ModelShape:
    """The KV shape of a model, as one rank of the node holds it."""

    name: str
    layer_num: int
    head_num: int
    head_dim: int
    dtype: str = "bfloat16"
    is_mla: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token takes over all layers (K and V for MHA, the latent for MLA)."""
        itemsize = int(self.torch_dtype.itemsize)
        heads = 1 if self.is_mla else self.head_num
        return self.layer_num * heads * self.head_dim * itemsize * (1 if self.is_mla else 2)

    def describe(self) -> str:
        kind = "MLA" if self.is_mla else "MHA"
        heads = "" if self.is_mla else f", {self.head_num} KV heads"
        return (
            f"{self.name}: {kind}, {self.layer_num} layers{heads}, head dim {self.head_dim}, "
            f"{self.dtype}, {self.bytes_per_token} B/token"
        )


#: Named shapes. ``tiny`` (16 B/token) lets a whole trace replay fit in laptop memory;
#: the others are real models' KV shapes, for sizing and bandwidth runs.
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", layer_num=1, head_num=1, head_dim=4),
    "tiny-mla": ModelShape("tiny-mla", layer_num=1, head_num=1, head_dim=8, is_mla=True),
    "small": ModelShape("small", layer_num=4, head_num=2, head_dim=32),
    "llama3-8b": ModelShape("llama3-8b", layer_num=32, head_num=8, head_dim=128),
    "llama3-70b": ModelShape("llama3-70b", layer_num=80, head_num=8, head_dim=128),
    "qwen3-32b": ModelShape("qwen3-32b", layer_num=64, head_num=8, head_dim=128),
    # DeepSeek-V3: one 576-wide latent (512 kv_lora_rank + 64 rope dims) per token per layer.
    "deepseek-v3": ModelShape("deepseek-v3", layer_num=61, head_num=1, head_dim=576, is_mla=True),
}


def resolve_shape(
    preset: str = "tiny",
    layer_num: int | None = None,
    head_num: int | None = None,
    head_dim: int | None = None,
    dtype: str | None = None,
    is_mla: bool | None = None,
) -> ModelShape:
    """A preset with any of its fields overridden; errors name the valid choices."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; use one of {', '.join(PRESETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown KV dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    shape = PRESETS[preset]
    changes: dict[str, object] = {}
    for field_name, value in (
        ("layer_num", layer_num), ("head_num", head_num), ("head_dim", head_dim),
        ("dtype", dtype), ("is_mla", is_mla),
    ):
        if value is not None:
            changes[field_name] = value
    if changes:
        shape = replace(shape, **changes)  # type: ignore[arg-type]
    for field_name in ("layer_num", "head_num", "head_dim"):
        if int(getattr(shape, field_name)) <= 0:
            raise ValueError(f"--{field_name.replace('_', '-')} must be positive")
    return shape
