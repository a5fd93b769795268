"""First-party backends the core knows by name, installed or not (like fsspec's registry).

When someone asks for one of these and its package is missing, the answer is the install
hint instead of "unknown backend".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBackend:
    name: str
    distribution: str
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install {self.distribution}"


KNOWN_BACKENDS: dict[str, KnownBackend] = {
    k.name: k
    for k in (
        KnownBackend("file", "hicache-file", "local files, the embedded default"),
        KnownBackend("mooncake", "hicache-mooncake", "Mooncake Store, distributed memory pool"),
        KnownBackend("hf3fs", "hicache-hf3fs", "DeepSeek 3FS through its usrbio client"),
        KnownBackend("nixl", "hicache-nixl", "NVIDIA NIXL (POSIX, GDS, 3FS, OBJ plugins)"),
        KnownBackend("aibrix", "hicache-aibrix", "AIBrix KV cache"),
    )
}
