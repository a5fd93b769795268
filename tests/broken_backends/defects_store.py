"""Gallery, part three: backends whose keys, deletes, clears, batches or threads go wrong.

Each is a correct reference backend (``reference.py``) with one method changed; ``GALLERY``
(in ``defects.py``) lists the kit check that must fail each and the words it must use.
"""

from __future__ import annotations

import os
import threading
import time
import unicodedata
from typing import Any

from broken_backends.reference import DirStore, MemoryStore, page_bytes_of

_CREATOR_PID = os.getpid()


class CaseFoldsKeys(MemoryStore):
    """Lower-cases every key (a case-insensitive store): keys that differ in case collide."""

    def _name(self, key: str) -> str:
        return self.page_key(key.lower())


class TruncatesKeysAt1024(MemoryStore):
    """Keeps the first 1024 characters of a key (an object store's key limit): long keys that
    differ only after that collide."""

    def _name(self, key: str) -> str:
        return self.page_key(key[:1024])


class AsciiOnlyKeys(MemoryStore):
    """Encodes keys as ASCII with ``?`` for anything else: unicode keys of one length collide."""

    def _name(self, key: str) -> str:
        return self.page_key(key.encode("ascii", "replace").decode("ascii"))


class NormalizesUnicode(MemoryStore):
    """NFC-normalises keys (as some file systems do): two code-point sequences of one text collide."""

    def _name(self, key: str) -> str:
        return self.page_key(unicodedata.normalize("NFC", key))


class JoinsKeysIntoPaths(DirStore):
    """Uses the key as a relative path under the root: ``a/../b`` and ``b`` are one file."""

    def _path(self, name: str) -> str:
        if len(name.encode()) > 200:  # too long for a file name: hashed, as DirStore does
            return super()._path(name)
        path = os.path.normpath(os.path.join(self.root, name.replace("\\", "_") + ".page"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


class ClearForgetsOnlyTheIndex(DirStore):
    """clear() hides the pages this instance knows of, but leaves their files: after reopen the
    cleared pages are served again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hidden: set[str] = set()

    def _store(self, name: str, data: bytes) -> bool:
        self._hidden.discard(name)
        return super()._store(name, data)

    def _load(self, name: str) -> bytes | None:
        return None if name in self._hidden else super()._load(name)

    def clear(self) -> None:
        self._hidden.update(self._names_on_disk())

    def _names_on_disk(self) -> set[str]:
        return {n for n in getattr(self, "_written", set())}

    def _path(self, name: str) -> str:
        self.__dict__.setdefault("_written", set()).add(name)
        return super()._path(name)


class DeleteForgetsOnlyTheIndex(ClearForgetsOnlyTheIndex):
    """delete() hides the page in this instance only: after reopen the deleted page is served."""

    def clear(self) -> None:
        DirStore.clear(self)

    def delete(self, key: str) -> bool:
        self._hidden.add(self._name(key))
        return True


class BatchExistsCache(MemoryStore):
    """batch_exists answers from a cache of keys it has seen stored, never invalidated by
    delete() or clear(): a deleted prefix is still counted as stored."""

    def _store(self, name: str, data: bytes) -> bool:
        self.__dict__.setdefault("_seen", set()).add(name)
        return super()._store(name, data)

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        seen = self.__dict__.get("_seen", set())
        for i, key in enumerate(keys):
            if self._name(key) not in seen:
                return i
        return len(keys)


class ServesDeletedPages(MemoryStore):
    """delete() drops the key from the existence index only; get() still serves the page."""

    def delete(self, key: str) -> bool:
        self.__dict__.setdefault("_deleted", set()).add(self._name(key))
        return True

    def _store(self, name: str, data: bytes) -> bool:
        self.__dict__.setdefault("_deleted", set()).discard(name)
        return super()._store(name, data)

    def _has(self, name: str) -> bool:
        return name not in self.__dict__.get("_deleted", set()) and super()._has(name)


class SortsBatches(MemoryStore):
    """batch_set pairs the values with the keys sorted (to group writes), not in the caller's
    order: pages land under each other's keys unless the keys come sorted."""

    def batch_set(self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> bool:
        return all(self.set(k, v) for k, v in zip(sorted(keys), list(values or [])))


class SharedStagingBuffer(MemoryStore):
    """set() copies each page through one staging buffer shared by all threads, without a lock:
    concurrent writers store each other's bytes."""

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        data = page_bytes_of(value)
        if data is None:
            return False
        staging = self.__dict__.setdefault("_staging", bytearray(len(data)))
        if len(staging) != len(data):
            staging = self.__dict__["_staging"] = bytearray(len(data))
        half = len(data) // 2
        staging[:half] = data[:half]
        time.sleep(0)  # another thread may run here (as a GIL-releasing copy lets it)
        staging[half:] = data[half:]
        return self._store(self._name(key), bytes(staging))


class WritesBehind(MemoryStore):
    """set() reserves a zero-filled page and returns True; the bytes land 50 ms later on a
    background thread. exists() is True at once, and a read in between gets zeros."""

    def _store(self, name: str, data: bytes) -> bool:
        super()._store(name, bytes(len(data)))
        threading.Timer(0.05, lambda: MemoryStore._store(self, name, data)).start()
        return True


class ZeroFilledOnKill(DirStore):
    """Reserves each page file at full size (zeros), then writes it in place. A kill -9 in
    between leaves a page of the right size that was never written; a fresh instance serves
    its zeros. (Pauses before the write in a forked writer, or with GALLERY_SLOW_WRITES.)"""

    def _store(self, name: str, data: bytes) -> bool:
        fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, len(data))
            if os.getpid() != _CREATOR_PID or os.environ.get("GALLERY_SLOW_WRITES"):
                time.sleep(0.5)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        return True


class SidecarUnderTheKvKey(MemoryStore):
    """v2: stores a sidecar pool's state pages under the KV page's own key, overwriting it."""

    def _sidecar_hashes(self, name: Any, keys: Any) -> list[str]:
        return list(keys)



class SharedReadBuffer(MemoryStore):
    """get() copies each page through one read buffer shared by all threads, without a lock:
    concurrent readers are served each other's bytes."""

    def _load(self, name: str) -> bytes | None:
        data = super()._load(name)
        if data is None:
            return None
        staging = self.__dict__.setdefault("_read_staging", bytearray(len(data)))
        if len(staging) != len(data):
            staging = self.__dict__["_read_staging"] = bytearray(len(data))
        half = len(data) // 2
        staging[:half] = data[:half]
        time.sleep(0)  # another thread may run here
        staging[half:] = data[half:]
        return bytes(staging)


class StripsKeys(MemoryStore):
    """Strips white space around keys (as a config or CLI parser would): ``k `` and ``k`` collide."""

    def _name(self, key: str) -> str:
        return self.page_key(key.strip())


class CutsKeysAtNul(MemoryStore):
    """Passes keys on as C strings: a key is cut at its first NUL, so ``a\\0b`` and ``a`` collide."""

    def _name(self, key: str) -> str:
        return self.page_key(key.split("\x00", 1)[0])


class DropsTailAfterAt(MemoryStore):
    """Treats everything after a key's first ``@`` as a namespace it already has, and drops it."""

    def _name(self, key: str) -> str:
        return self.page_key(key.split("@", 1)[0])
