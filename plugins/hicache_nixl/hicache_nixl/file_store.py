"""The file flavour: NIXL's 3FS, POSIX, GDS_MT or GDS plugin, one file per page.

A batch opens the page files, registers them with NIXL as FILE segments (the file
descriptor is the device id), runs one READ or WRITE request whose descriptors pair each
piece of a page in host memory with its offset in the page's file, then deregisters and
closes. Writes go to a temporary file that is renamed into place only after NIXL reports the
transfer done, so a failed or timed-out write never leaves a partial page behind.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from hicache_core.memory.pages import PageGeometry, page_geometry
from hicache_core.spec.errors import BackendConfigError, HiCacheError
from hicache_nixl.files import PageFiles, SizeBound
from hicache_nixl.spans import PageSpans
from hicache_nixl.store import NixlStore
from hicache_nixl.transfer import Outcome

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.spec.config import HiCacheStorageConfig

log = logging.getLogger(__name__)

#: O_DIRECT needs buffers, lengths and offsets aligned to the device's logical block; 4 KiB
#: covers every common device.
DIRECT_ALIGN = 4096


class NixlFileStore(NixlStore):
    """Pages as files under ``storage_dir``, moved by a NIXL file plugin."""

    flavour = "file"

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.files = PageFiles(self.settings.storage_dir)
        try:
            self.files.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"nixl: storage_dir {str(self.files.root)!r} cannot be created: {exc}; set extra-config "
                "'storage_dir' (or HICACHE_NIXL_STORAGE_DIR) to a writable directory"
            ) from exc
        self.bound = SizeBound(self.files, self.settings.max_bytes) if self.settings.max_bytes else None
        self.direct = False
        self.direct_reason = "o_direct=false"

    # ------------------------------------------------------------------ pool and O_DIRECT
    def _on_pool(self, pool: HostKVPool) -> None:
        mode = self.settings.o_direct
        if mode == "false":
            self.direct, self.direct_reason = False, "o_direct=false"
            return
        misaligned = _misalignment(self._geometry or page_geometry(pool))
        if misaligned:
            if mode == "true":
                raise BackendConfigError(
                    f"nixl: o_direct=true but {misaligned}; O_DIRECT needs {DIRECT_ALIGN}-byte aligned page "
                    "pieces (pinned host pools usually are). Use o_direct=auto or false"
                )
            self.direct, self.direct_reason = False, f"o_direct=auto: off, {misaligned}"
            return
        refused = self._direct_refused()
        if refused:
            if mode == "true":
                raise BackendConfigError(f"nixl: o_direct=true but {refused}; use o_direct=auto or false")
            self.direct, self.direct_reason = False, f"o_direct=auto: off, {refused}"
            return
        self.direct, self.direct_reason = True, f"o_direct={mode}: on, page pieces are {DIRECT_ALIGN}-byte aligned"

    def _direct_refused(self) -> str:
        probe = self.files.root / f".o_direct_probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError as exc:
            return f"the filesystem of {self.files.root} refuses O_DIRECT ({errno.errorcode.get(exc.errno or 0, exc)})"
        os.close(fd)
        probe.unlink(missing_ok=True)
        return ""

    # ------------------------------------------------------------------ existence
    def _expected_size(self) -> int | None:
        return self.page_bytes

    def _exists(self, skeys: list[str], stop_at_miss: bool = False) -> list[bool]:
        expected = self._expected_size()
        found = [False] * len(skeys)
        for i, skey in enumerate(skeys):
            try:
                size = os.stat(self.files.path(skey)).st_size
            except OSError:
                size = -1
            found[i] = size == expected if expected is not None else size > 0
            if stop_at_miss and not found[i]:
                break
        return found

    def _stored_size(self, skey: str) -> int | None:
        try:
            return os.stat(self.files.path(skey)).st_size
        except OSError:
            return None

    # ------------------------------------------------------------------ I/O
    def _flags(self, pooled: bool) -> int:
        return os.O_DIRECT if (pooled and self.direct) else 0

    def _transfer(self, op: str, spans: PageSpans, order: list[int], fds: list[int], lengths: list[int]) -> list[Outcome]:
        """Register the open page files (the fd is the device id), run ``op``, deregister."""
        try:
            reg = self.agent.register_memory(
                np.array([(0, lengths[i], fd) for i, fd in zip(order, fds)], dtype=np.uint64), "FILE",
                backends=[self.backend_name],
            )
        except Exception as exc:
            log.warning("nixl: registering %d page files failed: %s", len(order), exc)
            return [Outcome.FAILED] * len(order)
        try:
            sub = spans.take(order)
            return self._run_pages(op, sub.local_rows(), sub.remote_rows(fds), sub.pieces)
        finally:
            try:
                self.agent.deregister_memory(reg, backends=[self.backend_name])
            except Exception as exc:
                log.warning("nixl: deregistering page files failed: %s", exc)

    def _read(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
        n = len(skeys)
        results = [False] * n
        lengths = spans.lengths()
        flags = os.O_RDONLY | self._flags(pooled)
        order: list[int] = []
        fds: list[int] = []
        paths: list[str] = []
        misses = mismatches = unopenable = 0
        try:
            for i, skey in enumerate(skeys):
                path = self.files.path(skey)
                try:
                    fd = os.open(path, flags)
                except FileNotFoundError:
                    misses += 1
                    continue
                except OSError as exc:
                    log.warning("nixl: cannot open %s: %s", path, exc)
                    unopenable += 1
                    continue
                if os.fstat(fd).st_size != lengths[i]:
                    # A page of another shape (or a foreign file): a miss, never a partial read.
                    os.close(fd)
                    mismatches += 1
                    continue
                order.append(i)
                fds.append(fd)
                paths.append(path)
            outcomes = self._transfer("READ", spans, order, fds, lengths) if order else []
            self._count_outcomes(outcomes)
            for i, path, outcome in zip(order, paths, outcomes):
                if outcome is Outcome.DONE:
                    results[i] = True
                    if self.bound is not None:
                        self.bound.touch(path)
            hits = sum(results)
            for name, value in (("get_pages", n), ("hits", hits), ("misses", misses + mismatches),
                                ("size_mismatches", mismatches), ("failed_pages", unopenable),
                                ("bytes_read", sum(m for m, ok in zip(lengths, results) if ok))):
                self.counters.add(name, value)
            return results
        finally:
            for fd in fds:
                os.close(fd)

    def _write(self, skeys: list[str], spans: PageSpans, pooled: bool) -> list[bool]:
        n = len(skeys)
        results = [False] * n
        lengths = spans.lengths()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | self._flags(pooled)
        order: list[int] = []
        fds: list[int] = []
        names: list[tuple[str, str]] = []  # (temporary, final)
        uncreatable = 0
        try:
            for i, skey in enumerate(skeys):
                path = self.files.path(skey)
                tmp = self.files.tmp_path(path)
                try:
                    self.files.ensure_dir(path)
                    fd = os.open(tmp, flags, 0o644)
                except OSError as exc:
                    log.warning("nixl: cannot create %s: %s", tmp, exc)
                    uncreatable += 1
                    continue
                order.append(i)
                fds.append(fd)
                names.append((tmp, path))
            outcomes = self._transfer("WRITE", spans, order, fds, lengths) if order else []
            self._count_outcomes(outcomes)
            for i, fd, (tmp, path), outcome in zip(order, fds, names, outcomes):
                if outcome is Outcome.DONE:
                    results[i] = self._publish(fd, tmp, path, size=lengths[i])
            for name, value in (("set_pages", n), ("stored", sum(results)), ("failed_pages", uncreatable)):
                self.counters.add(name, value)
            return results
        finally:
            for i, fd, (tmp, _) in zip(order, fds, names):
                os.close(fd)
                if not results[i]:
                    _unlink(tmp)

    def _publish(self, fd: int, tmp: str, path: str, size: int) -> bool:
        """Make a fully written temporary file the page file (atomic rename)."""
        try:
            if self.settings.fsync:
                os.fsync(fd)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("nixl: cannot publish %s: %s", path, exc)
            self.counters.add("failed_pages")
            return False
        self.counters.add("bytes_written", size)
        if self.bound is not None:
            self.bound.added(path, size)
        return True

    # ------------------------------------------------------------------ management
    def delete(self, key: str) -> bool:
        path = self.files.path(self._skeys([key])[0])
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("nixl: cannot delete %s: %s", path, exc)
            return False
        if self.bound is not None:
            self.bound.removed(path)
        return True

    def clear(self) -> None:
        removed = self.files.remove_all()
        if self.bound is not None:
            self.bound.reset()
        log.info("nixl: cleared %d page files under %s", removed, self.files.root)

    def health_check(self) -> None:
        root = self.files.root
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            raise HiCacheError(f"nixl: storage_dir {str(root)!r} is missing or not writable")

    def _flavour_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "storage_dir": str(self.files.root), "o_direct": self.direct, "o_direct_reason": self.direct_reason,
            "max_bytes": self.settings.max_bytes,
        }
        if self.selection.plugin == "POSIX":
            stats["posix_engine"] = self.settings.posix_engine
        if self.bound is not None:
            stats.update(stored_bytes=self.bound.total_bytes, stored_pages=len(self.bound),
                         evicted_pages=self.bound.evicted_pages, evicted_bytes=self.bound.evicted_bytes)
        return stats


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _misalignment(geometry: PageGeometry) -> str:
    """'' when every page piece is DIRECT_ALIGN aligned in address and length, else what is not."""
    for page in {0, geometry.page_num - 1}:
        for piece in geometry.pieces(page):
            if piece.ptr % DIRECT_ALIGN:
                return f"host pool address {piece.ptr:#x} is not {DIRECT_ALIGN}-byte aligned"
            if piece.nbytes % DIRECT_ALIGN:
                return f"a page piece is {piece.nbytes} bytes, not a multiple of {DIRECT_ALIGN}"
    return ""
