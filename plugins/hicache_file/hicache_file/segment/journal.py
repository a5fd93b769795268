"""The journal of one namespace: an append-only file of checked 48-byte records, shared by every
process that opens the directory.

Appends, compaction and cleanup run under an exclusive ``flock`` of ``index.lock``; catching up
on what other processes appended runs under a shared one, so a reader never sees half an
append. A writer killed inside an append leaves a torn tail: the next appender pads it to a
whole record (whose check then fails, so it is skipped). Compaction writes a new file and
renames it over ``index.log``; others notice the new inode and read it from the start.

Not thread-safe: the namespace holds its own lock around every call.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hicache_file.segment.format import (
    JOURNAL_SIZE,
    KIND_MAGIC,
    magic_record,
    parse_journal,
)

JOURNAL_NAME = "index.log"
LOCK_NAME = "index.lock"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: Test hook: when set, an append is written in two parts and this is called in between.
MID_APPEND_HOOK: Callable[[], None] | None = None

Record = tuple[int, int, int, int, int]


class Journal:
    """``index.log`` and ``index.lock`` of one namespace directory."""

    def __init__(self, directory: str, fsync: bool = False) -> None:
        self.path = os.path.join(directory, JOURNAL_NAME)
        self.lock_path = os.path.join(directory, LOCK_NAME)
        self.fsync = fsync
        self._pid = os.getpid()
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)
        self._fd = -1
        self._ino = -1
        #: Bytes of the journal already applied (always whole records).
        self.consumed = 0
        self.torn = 0

    # ------------------------------------------------------------------ locking
    @contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        self._after_fork()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _after_fork(self) -> None:
        """A forked child shares its parent's lock description: open its own."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)
            self._fd, self._ino, self.consumed = -1, -1, 0

    def changed(self) -> bool:
        """Whether anything was appended (or the file replaced) since the last catch-up."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._ino != -1
        return st.st_ino != self._ino or st.st_size != self.consumed or os.getpid() != self._pid

    # ------------------------------------------------------------------ reading
    def ensure(self) -> None:
        """Create the journal (a magic record) when there is none. Exclusive lock held."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
        except FileExistsError:
            return
        try:
            _write_all(fd, magic_record(), 0)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read_new(self) -> tuple[bool, list[Record]]:
        """``(reset, records)``: what was appended since the last call (a lock held).

        ``reset`` is True when the file is new to this process (first read, compaction,
        replaced by hand): the records are then the whole journal and the caller starts over.
        A journal that does not start with this format's magic record reads as empty.
        """
        reset = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            reset = self._ino != -1
            self._close()
            return reset, []
        if st.st_ino != self._ino or self._fd < 0:
            self._close()
            self._fd = os.open(self.path, os.O_RDWR | _CLOEXEC)
            self._ino = os.fstat(self._fd).st_ino
            self.consumed = 0
            reset = True
        size = os.fstat(self._fd).st_size
        if size <= self.consumed:
            return reset, []
        data = os.pread(self._fd, size - self.consumed, self.consumed)
        if self.consumed == 0 and not data.startswith(magic_record()):
            return reset, []  # another format (or a torn first record): nothing here is ours
        records: list[Record] = []
        for rec in parse_journal(data):
            if rec is None:
                self.torn += 1
            elif rec[0] != KIND_MAGIC:
                records.append(rec)
        self.consumed += len(data) - len(data) % JOURNAL_SIZE
        return reset, records

    # ------------------------------------------------------------------ writing (exclusive lock)
    def append(self, payload: bytes) -> None:
        """Append whole records after a torn tail's padding; the caller has caught up."""
        if self._fd < 0:
            raise RuntimeError("journal append before catching up (ensure() and read_new() first)")
        size = os.fstat(self._fd).st_size
        pad = (-size) % JOURNAL_SIZE
        data = b"\0" * pad + payload
        hook = MID_APPEND_HOOK
        if hook is not None and len(data) > JOURNAL_SIZE:
            half = pad + JOURNAL_SIZE + JOURNAL_SIZE // 2
            _write_all(self._fd, data[:half], size)
            hook()
            _write_all(self._fd, data[half:], size + half)
        else:
            _write_all(self._fd, data, size)
        if self.fsync:
            os.fdatasync(self._fd)
        self.consumed = size + len(data)

    def rewrite(self, payload: bytes) -> None:
        """Replace the journal by a magic record and ``payload`` (compaction, clear)."""
        tmp = f"{self.path}.new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o644)
        try:
            _write_all(fd, magic_record() + payload, 0)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.rename(tmp, self.path)
        self._close()
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self.consumed = JOURNAL_SIZE + len(payload)

    def size(self) -> int:
        return self.consumed

    def close(self) -> None:
        self._close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino, self.consumed = -1, -1, 0


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
