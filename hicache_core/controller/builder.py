"""Building a session: the config checked, the backend created, the host pool registered, the
store proved able to write and read a page (``attach_check``), all on the shared admin pool
(``workers``) within ``attach_timeout_s`` each."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hicache_core.controller.attach_check import (
    check_config_model,
    check_declared_keys,
    check_paths,
    probe_store,
)
from hicache_core.controller.errors import ControllerError
from hicache_core.controller.faults import FaultInjectingStorage
from hicache_core.controller.ratelimit import limit_backend_logs
from hicache_core.controller.session import AttachSpec, Session
from hicache_core.controller.shown_config import public_fields
from hicache_core.controller.workers import admin_workers
from hicache_core.plugins.factory import create_backend, resolve_backend_class
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import HiCacheError

if TYPE_CHECKING:
    from hicache_core.controller.metrics import ControllerMetrics
    from hicache_core.controller.session import SessionReport
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.plugins.registry import BackendRegistry
    from hicache_core.spec.storage import HiCacheStorage

log = logging.getLogger(__name__)


class SessionBuilderMixin:
    """Mixin of ``StorageController``; it supplies the attributes declared here."""

    rank: int
    host_pool: HostKVPool
    storage_config: HiCacheStorageConfig
    registry: BackendRegistry | None
    attach_timeout_s: float
    io_timeout_s: float
    prefetch_workers: int
    metrics: ControllerMetrics
    _suffix: str
    _shown_fields: frozenset[str]

    if TYPE_CHECKING:  # provided by StorageController / BreakerMixin
        _on_report: SessionReport

    def _bounded(self, what: str, fn: Callable[[], Any], cleanup: Callable[[Any], None]) -> Any:
        """Run ``fn`` on the shared admin pool within ``attach_timeout_s``; see ``workers``."""
        try:
            return admin_workers().run(what, fn, self.attach_timeout_s, cleanup)
        except TimeoutError:
            raise TimeoutError(f"{what} took longer than attach_timeout_s={self.attach_timeout_s:g}") from None

    def _check_config(self, name: str, extra: dict[str, Any]) -> None:
        """The backend's config schema (``config_model``) and the path rules; see ``attach_check``."""
        cls: type | None = None
        try:
            cls, _, _ = resolve_backend_class(name, extra, self.registry)
        except HiCacheError:
            return  # create_backend reports it with the full story
        model_cls = cls if getattr(cls, "config_model", None) is not None else None
        if model_cls is not None:
            check_config_model(name, model_cls, extra)
        else:
            spec_names = self._declared_options(name)
            if spec_names:
                # The plugin's declared options are its schema: an unknown key is refused,
                # with the nearest declared one named (a typo never silently means a default).
                check_declared_keys(name, extra, spec_names)
            check_paths(name, extra, names=spec_names)
        self._shown_fields = public_fields(name, cls)

    def _declared_options(self, name: str) -> set[str] | None:
        try:
            from hicache_core.plugins.registry import default_registry

            spec = (self.registry or default_registry()).spec(name)
        except Exception:
            return None
        return {o.name for o in spec.config_options}

    def _build_session(self, spec: AttachSpec) -> Session:
        """Create the backend, wrap it, register the host pool, prove it can store a page."""
        name = spec.backend
        config = replace(self.storage_config, extra_config=spec.backend_extra)

        def _quiet_close(b: HiCacheStorage) -> None:
            try:
                b.close()
            except Exception:
                log.debug("closing a late backend raised", exc_info=True)

        try:
            self._check_config(name, spec.backend_extra)
            backend: HiCacheStorage = self._bounded(
                f"creating backend {name!r}",
                lambda: create_backend(name, config, None, self.registry),
                _quiet_close,
            )
        except HiCacheError as exc:
            raise ControllerError(f"Reject attach: cannot create storage backend {name!r}: {exc}") from exc
        except Exception as exc:
            raise ControllerError(
                f"Reject attach: cannot create storage backend {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        limit_backend_logs(type(backend).__module__)
        inner = getattr(backend, "inner", None)
        if inner is not None:
            limit_backend_logs(type(inner).__module__)
        try:
            self._bounded(
                f"registering the host pool with {name!r}",
                lambda: backend.register_mem_pool_host(self.host_pool),
                lambda _none: None,
            )
        except Exception as exc:
            _quiet_close(backend)
            raise ControllerError(
                f"Reject attach: storage backend {name!r} refused the host pool "
                f"({self.host_pool.layout}): {type(exc).__name__}: {exc}"
            ) from exc
        if self.storage_config.is_writer_rank:
            try:
                problem = self._bounded(
                    f"probing {name!r} with one page", lambda: probe_store(backend, self.host_pool, name, self.rank),
                    lambda _none: None,
                )
            except Exception as exc:
                problem = f"probing storage backend {name!r} failed: {type(exc).__name__}: {exc}"
            if problem is not None:
                _quiet_close(backend)
                raise ControllerError(f"Reject attach: {problem}")
        if spec.faults is not None:
            backend = FaultInjectingStorage(backend, spec.faults)
        return Session(
            spec, backend, self.host_pool, rank=self.rank, key_suffix=self._suffix,
            is_writer=self.storage_config.is_writer_rank, io_timeout_s=self.io_timeout_s,
            metrics=self.metrics, report=self._on_report, prefetch_workers=self.prefetch_workers,
        )

