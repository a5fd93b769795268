"""Make any object with SGLang's storage methods a full ``HiCacheStorage``.

Backends written for SGLang do not subclass hicache's ABC. The factory checks their methods
(not their base class) and wraps them here, so callers always get the same contract: lists
where lists are promised, a working v1 path whether or not the backend has one.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendLoadError, HiCacheError, LayoutError
from hicache_core.spec.storage import HiCacheStorage

if TYPE_CHECKING:
    from hicache_core.compat.sglang_known import KnownSGLangClass
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)

REQUIRED_METHODS: tuple[str, ...] = ("get", "set", "exists")
#: Keys used as they are under ``namespace_keys``; any other key is hashed (see DuckTypedBackend).
_PLAIN_KEY = re.compile(r"[0-9A-Za-z]{1,128}")
V1_METHODS: tuple[str, ...] = ("batch_get_v1", "batch_set_v1")


def missing_methods(obj: Any, names: tuple[str, ...] = REQUIRED_METHODS) -> list[str]:
    """The names in ``names`` that ``obj`` lacks or has as non-callables."""
    return [n for n in names if not callable(getattr(obj, n, None))]


def _mentions_layout(exc: BaseException) -> bool:
    text = str(exc).lower().replace("_", " ")
    return "layout" in text or "page first" in text


def _info(extra_info: HiCacheStorageExtraInfo | None) -> HiCacheStorageExtraInfo:
    """SGLang always passes an ``extra_info`` object (its fields may be None); never hand None on."""
    return extra_info if extra_info is not None else HiCacheStorageExtraInfo()


def _accepts(fn: Any, *args: Any) -> bool:
    """Whether ``fn``'s signature takes ``args`` (True when it has none to read)."""
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _is_pointer(target: Any) -> bool:
    """A host-memory address (SGLang's pointer form of get/set), not a tensor or None."""
    return isinstance(target, int) and not isinstance(target, bool)


def _into_target(page: torch.Tensor, target: Any) -> torch.Tensor:
    """``page`` copied into ``target`` when one was given (bytes, same size), else ``page``."""
    if not isinstance(target, torch.Tensor):
        return page
    if target.numel() * target.element_size() != page.numel() * page.element_size():
        raise ValueError(
            f"target holds {target.numel() * target.element_size()} bytes, a page has "
            f"{page.numel() * page.element_size()}"
        )
    target.view(-1).view(torch.uint8).copy_(page.contiguous().view(-1).view(torch.uint8))
    return target


def defines_own(cls: type, name: str) -> bool:
    """True when class ``cls`` has a callable ``name`` not inherited from a base's default.

    The defaults are hicache's ABC's (which raise or go through the generic path) and SGLang's
    base class's, real or shimmed (which do nothing or return None).
    """
    fn = getattr(cls, name, None)
    if not callable(fn):
        return False
    if fn is getattr(HiCacheStorage, name, None):
        return False
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", "") or ""
    from_sglang_base = qualname == f"HiCacheStorage.{name}" and (
        module.startswith("sglang.") or module == "hicache_core.compat.sglang_api"
    )
    return not from_sglang_base


def implements(obj: Any, name: str) -> bool:
    """True when ``obj`` has a callable ``name`` of its own (see ``defines_own``)."""
    if not callable(getattr(obj, name, None)):
        return False
    if getattr(type(obj), name, None) is None:
        return True  # set on the instance
    return defines_own(type(obj), name)


class DuckTypedBackend(HiCacheStorage):
    """A ``HiCacheStorage`` that forwards to an object with SGLang's method names.

    ``interface_v1`` says the object implements ``batch_get_v1``/``batch_set_v1`` (SGLang's
    dynamic-backend key). When such a call returns something other than a list of one bool
    per key (SGLang's base class returns None), the wrapper logs it once and serves that call
    through the generic get/set path instead of letting L3 switch off silently.
    """

    def __init__(
        self, inner: Any, config: HiCacheStorageConfig, interface_v1: bool, name: str,
        known: KnownSGLangClass | None = None, namespace_keys: bool = False,
    ) -> None:
        super().__init__(config)
        #: Store each page under ``{key}@{namespace}`` (``hicache_core.keys``), with keys that are
        #: not plain alphanumerics hashed first: for classes that key pages by hash and model/rank
        #: only (SGLang's own), so a page of another dtype, layout or geometry is a miss, and an
        #: odd key can never become a path or collide with another.
        self._namespace_keys = namespace_keys
        missing = missing_methods(inner)
        if missing:
            raise BackendLoadError(
                f"backend {name!r}: {type(inner).__name__} is not a storage backend: it lacks "
                f"{', '.join(missing)}. Implement SGLang's HiCacheStorage methods or subclass "
                "hicache_core.HiCacheStorage"
            )
        self.inner = inner
        self.name = name
        # SGLang's own classes hicache knows (hicache_core.compat.sglang_known): what they can
        # do, and whether their get/set take pointers (then flat pages go through their v1).
        self._flat_via_v1 = bool(known and known.flat_pages_via_v1)
        self._v1_reads_present_only = bool(known and known.v1_reads_present_only)
        interface_v1 = interface_v1 or bool(known and known.capabilities.zero_copy_v1)
        # A get/batch_get whose target is a required argument (SGLang's HiCacheFile) is handed
        # a staging page of the host pool when the caller gives none.
        self._get_needs_target = not _accepts(inner.get, "k")
        batch_get = getattr(inner, "batch_get", None)
        self._batch_get_needs_targets = callable(batch_get) and not _accepts(batch_get, ["k"])
        self._native_v1 = interface_v1 and not missing_methods(inner, V1_METHODS)
        if interface_v1 and not self._native_v1:
            raise BackendLoadError(
                f"backend {name!r}: interface_v1 is set but {type(inner).__name__} lacks "
                f"{', '.join(missing_methods(inner, V1_METHODS))}; implement them or set interface_v1 to 0"
            )
        self._warned_v1 = False
        declared = getattr(inner, "capabilities", None)
        if declared is HiCacheStorage.capabilities:
            declared = None  # inherited from hicache's ABC (or SGLang's base on it): says nothing
        if not isinstance(declared, Capabilities) and known is not None:
            declared = known.capabilities
        self._declared_caps = isinstance(declared, Capabilities)
        caps = declared if isinstance(declared, Capabilities) else Capabilities(
            zero_copy_v1=self._native_v1,
            delete=implements(inner, "delete"),
            clear=implements(inner, "clear"),
        )
        self.capabilities = caps  # type: ignore[misc]  # per-instance, from the wrapped class

    # lifecycle ---------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        if self.capabilities.requires_page_layout and not mem_pool_host.is_page_first_layout:
            raise LayoutError(
                f"backend {self.name!r} needs page-contiguous host memory, but the host pool uses layout "
                f"{mem_pool_host.layout!r}; start with --hicache-mem-layout page_first (or page_first_direct)"
            )
        super().register_mem_pool_host(mem_pool_host)
        register = getattr(self.inner, "register_mem_pool_host", None)
        if callable(register):
            try:
                register(mem_pool_host)
            except (AssertionError, ValueError) as exc:
                # SGLang backends state a layout requirement with an assert (Mooncake: "only
                # support page first or page first direct layout"): make it hicache's LayoutError.
                if mem_pool_host.is_page_first_layout or not _mentions_layout(exc):
                    raise
                raise LayoutError(
                    f"backend {self.name!r} refused host pool layout {mem_pool_host.layout!r} ({exc}); "
                    "start with --hicache-mem-layout page_first (or page_first_direct)"
                ) from exc
        else:
            self.inner.mem_pool_host = mem_pool_host

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def clear(self) -> None:
        clear = getattr(self.inner, "clear", None)
        if not callable(clear):
            raise NotImplementedError(f"backend {self.name!r} does not support clear()")
        clear()

    def delete(self, key: str) -> bool:
        delete = getattr(self.inner, "delete", None)
        if not callable(delete):
            raise NotImplementedError(f"backend {self.name!r} does not support delete()")
        result = delete(self._k(key))
        return True if result is None else bool(result)

    def get_stats(self) -> dict[str, Any] | None:
        stats = getattr(self.inner, "get_stats", None)
        value = stats() if callable(stats) else None
        if value is None or isinstance(value, dict):
            return value
        return {"stats": value}

    # single-key --------------------------------------------------------------
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        if self._flat_via_v1 and not _is_pointer(target_location):
            return self._get_via_v1([key], [target_location])[0]
        if target_location is None and self._get_needs_target:
            target_location = self._staging_page("get")
        result = self.inner.get(self._k(key), target_location, target_sizes)
        return result if isinstance(result, torch.Tensor) else None

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        if self._flat_via_v1 and isinstance(value, torch.Tensor):
            return self._set_via_v1([key], [value])
        return bool(self.inner.set(self._k(key), value, target_location, target_sizes))

    def exists(self, key: str) -> bool:
        if self._flat_via_v1:  # its exists() asks the raw key, its v1 writes per-rank keys
            return int(self.inner.batch_exists([self._k(key)])) >= 1
        return bool(self.inner.exists(self._k(key)))

    # keys ---------------------------------------------------------------------
    def _k(self, key: str) -> str:
        if not self._namespace_keys:
            return key
        safe = key if _PLAIN_KEY.fullmatch(key) else "x" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{safe}@{self.namespace}"

    def _ks(self, keys: list[str]) -> list[str]:
        return [self._k(k) for k in keys] if self._namespace_keys else list(keys)

    # staging pages, for classes that cannot take or return a flat page ----------
    def _staging_page(self, what: str) -> torch.Tensor:
        pool = self.mem_pool_host
        if pool is None:
            raise HiCacheError(
                f"backend {self.name!r}: {type(self.inner).__name__}.{what} needs a target buffer; pass "
                "target_location, or register a host pool first (its pages size the buffer)"
            )
        return pool.get_dummy_flat_data_page()

    @contextmanager
    def _staged_pages(self, n: int) -> Iterator[torch.Tensor | None]:
        """``n`` pages of the host pool to move flat pages through the backend's v1 (None: pool full)."""
        pool = self.mem_pool_host
        if pool is None:
            raise HiCacheError(
                f"backend {self.name!r}: {type(self.inner).__name__} moves pages only between storage and "
                "the host pool; register a host pool before get/set"
            )
        idx = pool.alloc(n * pool.page_size)
        try:
            yield idx
        finally:
            if idx is not None:
                pool.free(idx)

    def _get_via_v1(self, keys: list[str], targets: list[Any]) -> list[torch.Tensor | None]:
        pool = self.mem_pool_host
        with self._staged_pages(len(keys)) as idx:
            if idx is None or pool is None:
                return [None] * len(keys)
            hits = self.batch_get_v1(keys, idx)
            out: list[torch.Tensor | None] = []
            for i, (hit, target) in enumerate(zip(hits, targets)):
                page = pool.get_data_page(int(idx[i * pool.page_size]), flat=True).clone()
                out.append(_into_target(page, target) if hit else None)
            return out

    def _set_via_v1(self, keys: list[str], values: list[Any]) -> bool:
        pool = self.mem_pool_host
        with self._staged_pages(len(keys)) as idx:
            if idx is None or pool is None:
                return False
            try:
                for i, value in enumerate(values):
                    pool.set_from_flat_data_page(int(idx[i * pool.page_size]), value)
            except (ValueError, RuntimeError):
                return False  # not a page of this pool
            return all(self.batch_set_v1(keys, idx))

    # bulk ----------------------------------------------------------------------
    def batch_get(self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None) -> list[torch.Tensor | None]:
        if not keys:  # SGLang never sends an empty batch; its backends may assert on one
            return []
        if self._flat_via_v1:
            locs = list(target_locations) if target_locations is not None else [None] * len(keys)
            return self._get_via_v1(list(keys), locs)
        if target_locations is None and self._batch_get_needs_targets:
            target_locations = [self._staging_page("batch_get") for _ in keys]
        fn = getattr(self.inner, "batch_get", None)
        if not callable(fn):
            return super().batch_get(keys, target_locations, target_sizes)
        mapped = self._ks(keys)
        result = fn(mapped, target_locations, target_sizes)
        if isinstance(result, list) and len(result) == len(keys):
            return [r if isinstance(r, torch.Tensor) else None for r in result]
        if isinstance(result, int) and not isinstance(result, bool) and target_locations is not None:
            return self._leading_counts(fn, mapped, list(target_locations), target_sizes, result)
        return super().batch_get(keys, target_locations, target_sizes)

    def _leading_counts(
        self, fn: Any, keys: list[str], locs: list[Any], target_sizes: Any, first: int
    ) -> list[torch.Tensor | None]:
        """Per-page answers from a ``batch_get`` that returns how many leading pages it read.

        Such an answer says nothing about the pages after the first miss, so the rest of the
        batch is asked again from the page after the gap; a miss costs one more call.
        """
        sizes = list(target_sizes) if target_sizes is not None else None
        out: list[torch.Tensor | None] = []
        start, count = 0, first
        while True:
            n = max(0, min(int(count), len(keys) - start))
            out.extend(locs[start : start + n])
            start += n
            if start >= len(keys):
                return out
            out.append(None)  # the page that stopped the count
            start += 1
            if start >= len(keys):
                return out
            count = fn(keys[start:], locs[start:], sizes[start:] if sizes is not None else None)
            if not isinstance(count, int) or isinstance(count, bool):
                out.extend([None] * (len(keys) - start))
                return out

    def batch_set(self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None) -> bool:
        if not keys:
            return True
        if self._flat_via_v1 and values is not None:
            return self._set_via_v1(list(keys), list(values))
        fn = getattr(self.inner, "batch_set", None)
        if not callable(fn):
            return super().batch_set(keys, values, target_locations, target_sizes)
        return bool(fn(self._ks(keys), values, target_locations, target_sizes))

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        if not keys:
            return 0
        fn = getattr(self.inner, "batch_exists", None)
        if not callable(fn):
            return super().batch_exists(keys, extra_info)
        # Older backends take no extra_info. Ask the signature, not a TypeError, which could
        # come from inside the backend: retrying would hide that bug and call it twice.
        mapped = self._ks(keys)
        result = fn(mapped, _info(extra_info)) if _accepts(fn, mapped, extra_info) else fn(mapped)
        if isinstance(result, list):  # per-key answer: count the leading hits
            count = 0
            for hit in result:
                if not hit:
                    break
                count += 1
            return count
        return max(0, min(int(result), len(keys)))

    # zero-copy v1 -------------------------------------------------------------
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        if not keys:
            return []
        if self._native_v1:
            if self._v1_reads_present_only:
                return self._get_v1_present(keys, host_indices, extra_info)
            result = self.inner.batch_get_v1(self._ks(keys), host_indices, _info(extra_info))
            checked = self._check_v1("batch_get_v1", result, len(keys))
            if checked is not None:
                return checked
        return super().batch_get_v1(keys, host_indices, extra_info)

    def _get_v1_present(self, keys: list[str], host_indices: torch.Tensor,
                        extra_info: HiCacheStorageExtraInfo | None) -> list[bool]:
        """For a class whose v1 read fails the whole batch when one page is missing: read only
        the pages it has, so each page's answer is its own."""
        pool = self.mem_pool_host
        page = int(pool.page_size) if pool is not None else len(host_indices) // len(keys)
        present = [i for i, k in enumerate(keys) if self.exists(k)]
        out = [False] * len(keys)
        if not present:
            return out
        idx = torch.as_tensor(host_indices).reshape(len(keys), page)[present].flatten()
        result = self.inner.batch_get_v1(self._ks([keys[i] for i in present]), idx, _info(extra_info))
        checked = self._check_v1("batch_get_v1", result, len(present))
        if checked is None:
            return super().batch_get_v1(keys, host_indices, extra_info)
        for i, hit in zip(present, checked):
            out[i] = hit
        return out

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        if not keys:
            return []
        if self._native_v1:
            result = self.inner.batch_set_v1(self._ks(keys), host_indices, _info(extra_info))
            checked = self._check_v1("batch_set_v1", result, len(keys))
            if checked is not None:
                return checked
        return super().batch_set_v1(keys, host_indices, extra_info)

    def _check_v1(self, method: str, result: Any, count: int) -> list[bool] | None:
        if isinstance(result, (list, tuple)) and len(result) == count:
            return [bool(r) for r in result]
        if not self._warned_v1:
            self._warned_v1 = True
            log.error(
                "backend %r: %s returned %r instead of a list of %d bools; serving v1 calls "
                "through the generic get/set path (fix the backend or set interface_v1 to 0)",
                self.name, method, type(result).__name__ if result is not None else None, count,
            )
        self._native_v1 = False
        if self.capabilities.zero_copy_v1 and not self._declared_caps:
            self.capabilities = replace(self.capabilities, zero_copy_v1=False)  # type: ignore[misc]
        return None

    def health_check(self) -> None:
        probe = getattr(self.inner, "health_check", None)
        if callable(probe):
            probe()
        else:
            super().health_check()
