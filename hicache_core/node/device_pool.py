"""The L1 pool: KV pages in device memory (CUDA when available, else a CPU tensor).

Rows are whole pages in the host pool's piece order (see ``host_pages``). Loads copy piece by
piece when pieces are large (from pinned memory to a GPU: straight DMA), else gather the small
pieces on the host and copy once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hicache_core.node.host_pages import HostPages

#: Pieces at least this large are copied one by one (DMA); smaller ones are gathered first.
DIRECT_COPY_MIN_PIECE = 64 * 1024


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when usable, else CPU. ``cuda`` without a GPU is an error that says so."""
    if requested == "auto":
        try:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        except Exception:
            return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device here; use --device cpu")
    return torch.device(requested)


class DevicePool:
    """``capacity`` page rows of ``page_bytes`` bytes on ``device``, with a free list."""

    def __init__(self, capacity: int, page_bytes: int, device: torch.device) -> None:
        if capacity <= 0:
            raise ValueError("the device pool needs at least one page; raise --device-capacity-tokens")
        self.capacity = capacity
        self.page_bytes = page_bytes
        self.device = device
        self.buffer = torch.zeros((capacity, page_bytes), dtype=torch.uint8, device=device)
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def write(self, slots: Sequence[int], rows: torch.Tensor) -> None:
        if not slots:
            return
        index = torch.tensor(list(slots), dtype=torch.int64, device=self.device)
        self.buffer.index_copy_(0, index, rows.to(self.device, non_blocking=True))

    def read(self, slots: Sequence[int]) -> torch.Tensor:
        index = torch.tensor(list(slots), dtype=torch.int64, device=self.device)
        return self.buffer.index_select(0, index)

    def load_from_host(self, host: HostPages, slots: Sequence[int], pages: Sequence[int]) -> None:
        """Copy host ``pages`` into rows ``slots`` (same order)."""
        if not slots:
            return
        pieces_per_page = host.pool.pieces_per_page()
        piece_bytes = host.page_bytes // pieces_per_page
        if piece_bytes >= DIRECT_COPY_MIN_PIECE:
            for slot, page in zip(slots, pages):
                offset = 0
                row = self.buffer[slot]
                for piece in host.pieces(page):
                    row[offset : offset + piece.numel()].copy_(piece, non_blocking=True)
                    offset += piece.numel()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            return
        self.write(slots, host.read(pages))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
