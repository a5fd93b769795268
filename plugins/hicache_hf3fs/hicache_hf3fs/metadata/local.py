"""In-process metadata for one rank file, shared by every backend of this process that opens it.

Only one *process* may use a rank file with in-process metadata: the first takes an exclusive
``flock`` on the file, and a second process gets a ``BackendConfigError`` telling it to run
the shared metadata service instead. The index is saved next to the file (``<file>.index.json``,
written atomically) when the last backend of the process closes it, and loaded at the next
start, so pages survive a restart. Between saves every change to the visible pages is appended
to ``<index>.journal`` before the call returns (``metadata.journal``), and replayed at start,
so a page reported stored survives a killed process too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from hicache_core.spec.errors import BackendConfigError
from hicache_hf3fs.metadata.base import PageMetadata
from hicache_hf3fs.metadata.index import Allocation, PageIndex, SlotRef
from hicache_hf3fs.metadata.journal import Journal

log = logging.getLogger(__name__)


class _Shared:
    """One rank file's index and lock, shared by the backends of this process."""

    def __init__(self, data_path: str, index_path: str) -> None:
        self.data_path = data_path
        self.index_path = index_path
        self.lock = threading.Lock()
        self.users = 0
        self.index: PageIndex | None = None
        self.journal: Journal | None = None
        self.lock_fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise BackendConfigError(
                f"hf3fs: {data_path} is in use by another process with in-process metadata; "
                "processes (ranks, nodes) that share a file must share one metadata service: start "
                "`python -m hicache_hf3fs.metadata_server` and set metadata_server_url"
            ) from None

    def load_saved(self) -> dict[str, Any] | None:
        try:
            with open(self.index_path) as fh:
                state = json.load(fh)
            return state if isinstance(state, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("hf3fs: ignoring unreadable index %s: %s", self.index_path, exc)
            return None

    def save(self) -> None:
        if self.index is None:
            return
        tmp = f"{self.index_path}.tmp.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(self.index.to_state(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.index_path)
        if self.journal is not None:
            self.journal.restart(self.index.num_pages, self.index.page_bytes)

    def record(self, records: list[list[Any]]) -> None:
        """Journal changes, and the keys the index removed meanwhile (evictions) first."""
        index, journal = self.index, self.journal
        if index is None or journal is None:
            return
        removed = [["d", k] for k in index.removed or ()]
        if index.removed:
            index.removed.clear()
        journal.append(removed + records)

    def release(self) -> None:
        if self.journal is not None:
            self.journal.close()
        os.close(self.lock_fd)


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


class LocalPageMetadata(PageMetadata):
    kind = "local"

    def __init__(self, data_path: str, index_path: str = "") -> None:
        real = os.path.realpath(data_path)
        self.namespace = real
        self._closed = False
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(real)
            if shared is None:
                os.makedirs(os.path.dirname(real), exist_ok=True)
                shared = _Shared(real, index_path or f"{real}.index.json")
                _REGISTRY[real] = shared
            shared.users += 1
        self._shared = shared

    def _index(self) -> PageIndex | None:
        return self._shared.index

    def initialize(self, num_pages: int, page_bytes: int, write_lease_seconds: float) -> None:
        sh = self._shared
        with sh.lock:
            if sh.index is not None:
                if (sh.index.num_pages, sh.index.page_bytes) != (num_pages, page_bytes):
                    raise BackendConfigError(
                        f"hf3fs: {sh.data_path} is open in this process with pages of {sh.index.page_bytes} "
                        f"bytes x {sh.index.num_pages}, this backend needs {page_bytes} x {num_pages}; "
                        "give each model (page geometry) its own file_path_prefix"
                    )
                return
            state = sh.load_saved()
            if state is not None and (state.get("num_pages"), state.get("page_bytes")) != (num_pages, page_bytes):
                log.warning(
                    "hf3fs: the saved index of %s describes another page geometry (%s x %s); starting empty",
                    sh.data_path, state.get("page_bytes"), state.get("num_pages"),
                )
                state = None
            sh.journal = Journal(f"{sh.index_path}.journal")
            state, replayed = sh.journal.replay(state, num_pages, page_bytes)
            if state is not None:
                sh.index = PageIndex.from_state(state, write_lease_seconds)
                log.info("hf3fs: loaded %d pages of %s (%d journal records replayed)",
                         len(state.get("entries", [])), sh.data_path, replayed)
            else:
                sh.index = PageIndex(num_pages, page_bytes, write_lease_seconds)
            sh.index.removed = []
            sh.save()  # the replayed state becomes the snapshot, and the journal starts over

    def _call(self, fn_name: str, *args: Any, default: Any) -> Any:
        sh = self._shared
        with sh.lock:
            if sh.index is None:
                return default
            return getattr(sh.index, fn_name)(*args)

    def allocate(self, keys: Sequence[str], parents: Sequence[str | None]) -> list[Allocation]:
        sh = self._shared
        with sh.lock:
            if sh.index is None:
                return [Allocation("full")] * len(keys)
            out = sh.index.allocate(keys, parents)
            sh.record([])  # evictions, before their slots receive new bytes
            return out

    def confirm(self, written: Sequence[SlotRef], aborted: Sequence[SlotRef]) -> list[bool]:
        sh = self._shared
        with sh.lock:
            if sh.index is None:
                return [False] * len(written)
            out = sh.index.confirm(written, aborted)
            made: list[list[Any]] = []
            for ref, ok in zip(written, out):
                ready = sh.index.ready_ref(ref.key) if ok else None
                if ready is not None and ready[:2] == (ref.slot, ref.gen):  # this write made it visible
                    made.append(["c", ref.key, ref.slot, ref.gen, ready[2]])
            sh.record(made)
            return out

    def lookup(self, keys: Sequence[str]) -> list[SlotRef | None]:
        return self._call("lookup", keys, default=[None] * len(keys))  # type: ignore[no-any-return]

    def validate(self, refs: Sequence[SlotRef]) -> list[bool]:
        return self._call("validate", refs, default=[False] * len(refs))  # type: ignore[no-any-return]

    def exists(self, keys: Sequence[str]) -> list[bool]:
        return self._call("exists", keys, default=[False] * len(keys))  # type: ignore[no-any-return]

    def delete(self, keys: Sequence[str]) -> int:
        sh = self._shared
        with sh.lock:
            if sh.index is None:
                return 0
            n = sh.index.delete(keys)
            sh.record([])
            return n

    def clear(self) -> None:
        sh = self._shared
        with sh.lock:
            if sh.index is None:
                return
            sh.index.clear()
            sh.record([["x"]])

    def stats(self) -> dict[str, Any]:
        out = self._call("stats", default={})
        return {"metadata": "local", "index_path": self._shared.index_path, **out}

    def parent_of(self, key: str) -> str | None:
        return self._call("parent_of", key, default=None)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _REGISTRY_LOCK:
            sh = self._shared
            sh.users -= 1
            if sh.users > 0:
                return
            del _REGISTRY[sh.data_path]
        try:
            with sh.lock:
                sh.save()
        except OSError as exc:
            log.warning("hf3fs: could not save the index %s: %s", sh.index_path, exc)
        finally:
            sh.release()
