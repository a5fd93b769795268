"""The I/O client interface between the backend and a pre-sized rank file.

A client moves page-sized items at byte offsets of one pre-sized file, in batches. Each item
is a list of buffers (the contiguous pieces of one host-pool page: K then V, or one latent
piece) that together make up the item's length. Results are per item, in the order given:
the number of bytes moved, or a negative errno. Clients never raise on I/O errors; they raise
only for programming errors (mismatched lengths) and at construction.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

#: One item: the buffers that make up one page, in file order.
Item = Sequence[memoryview]


def item_nbytes(item: Item) -> int:
    return sum(m.nbytes for m in item)


class PageIOClient(ABC):
    """Batch read / batch write of page-sized items at offsets of one pre-sized file."""

    #: ``usrbio`` or ``file``.
    kind: str = ""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    @property
    @abstractmethod
    def on_3fs(self) -> bool:
        """True when the I/O really goes to 3FS."""

    @abstractmethod
    def batch_read(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        """Read each item from its offset; bytes read or -errno per item."""

    @abstractmethod
    def batch_write(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        """Write each item at its offset; bytes written or -errno per item."""

    @abstractmethod
    def flush(self) -> None:
        """Make written bytes durable (fsync)."""

    @abstractmethod
    def close(self) -> None:
        """Release the file, rings and shared memory. Idempotent."""

    def describe(self) -> dict[str, Any]:
        """What ``status`` and ``get_stats`` show about the client."""
        return {"client": self.kind, "on_3fs": self.on_3fs, "path": self.path, "file_size": self.size}

    def check_batch(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int | None]:
        """Per item: None when it may go ahead, else the -errno to report for it."""
        if len(offsets) != len(items):
            raise ValueError(f"{len(offsets)} offsets for {len(items)} items")
        verdicts: list[int | None] = []
        for off, item in zip(offsets, items):
            n = item_nbytes(item)
            if off < 0 or n <= 0 or off + n > self.size:
                verdicts.append(-errno.EINVAL)
            else:
                verdicts.append(None)
        return verdicts


def open_presized(path: str, size: int) -> int:
    """Open (creating) ``path`` read-write and make it at least ``size`` bytes long.

    Growing uses ftruncate, so local files stay sparse and 3FS allocates chunks lazily.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd
