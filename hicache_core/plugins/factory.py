"""The one path that creates every backend: installed (entry point) or dynamic."""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from hicache_core.compat import sglang_shim
from hicache_core.compat.sglang_api import is_sglang_shaped
from hicache_core.compat.sglang_bridge import is_real_sglang_class, to_sglang_config
from hicache_core.compat.sglang_known import known_sglang_class
from hicache_core.plugins.adapter import V1_METHODS, DuckTypedBackend, defines_own, missing_methods
from hicache_core.plugins.dynamic import DYNAMIC_KEYS, load_dynamic_class
from hicache_core.plugins.registry import DYNAMIC, BackendRegistry, default_registry
from hicache_core.plugins.split_heads import SplitHeadsStorage, with_head_split
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError, BackendLoadError, ContractVersionError, HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.version import CONTRACT_VERSION, format_contract_version, parse_contract_version

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool

log = logging.getLogger(__name__)


def check_contract_version(cls: type, name: str) -> None:
    """Refuse a class written for another major version of the storage contract.

    Classes that declare nothing were written for SGLang's contract, which is version 1.
    """
    declared = getattr(cls, "contract_version", "1.0")
    try:
        version = parse_contract_version(declared)
    except ValueError as exc:
        raise ContractVersionError(f"backend {name!r}: {exc}") from None
    if version[0] != CONTRACT_VERSION[0]:
        raise ContractVersionError(
            f"backend {name!r} ({cls.__module__}.{cls.__qualname__}) was written for storage contract "
            f"{format_contract_version(version)}, but this hicache-core speaks "
            f"{format_contract_version(CONTRACT_VERSION)}; install a release of the backend built for "
            f"contract {CONTRACT_VERSION[0]}.x, or a hicache-core that speaks {version[0]}.x"
        )
    if version[1] > CONTRACT_VERSION[1]:
        log.warning(
            "backend %r targets contract %s, newer than this core's %s; features it expects may be missing",
            name, format_contract_version(version), format_contract_version(CONTRACT_VERSION),
        )


def resolve_backend_class(
    name: str, extra_config: dict[str, Any] | None = None, registry: BackendRegistry | None = None
) -> tuple[type, str, bool | None]:
    """Find the class behind ``name``; returns ``(cls, display_name, interface_v1)``.

    ``interface_v1`` is None for installed backends (their ``capabilities`` say it) and the
    config's flag for dynamic ones.
    """
    if name == DYNAMIC:
        cls, target = load_dynamic_class(dict(extra_config or {}))
        return cls, target.backend_name, target.interface_v1
    reg = registry or default_registry()
    try:
        return reg.load_class(name), name, None
    except BackendLoadError as exc:
        # A plugin whose store module imports SGLang's base class: serve it from the shim too.
        missing = sglang_shim.missing_sglang_module(exc)
        if missing is None or not sglang_shim.install(reason=f"backend {name!r} imports {missing}"):
            raise
    return reg.load_class(name), name, None


def _adapted_v1(cls: type, name: str, interface_v1: bool | None, registry: BackendRegistry | None) -> bool:
    """Whether an adapted backend's own ``batch_*_v1`` serve the zero-copy calls.

    Dynamic backends say so with ``interface_v1``; installed ones through their spec's
    capabilities, or else by defining both methods themselves (not inheriting a base's).
    """
    if interface_v1 is not None:
        return interface_v1
    spec_caps = (registry or default_registry()).spec(name).capabilities
    if spec_caps is not None:
        return spec_caps.zero_copy_v1
    return all(defines_own(cls, m) for m in V1_METHODS)


def _instantiate(cls: type, config: HiCacheStorageConfig, name: str) -> Any:
    """Call the constructor the way the class expects: ``(config)`` or SGLang's ``(config, kwargs)``."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    attempts: list[tuple[Any, ...]] = [(config,), (config, {}), ()]
    if sig is not None:
        params = [
            p for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(params) >= 2:
            attempts = [(config, {}), (config,)]
        elif len(params) == 0 and not any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
            attempts = [(), (config,)] if not sig.parameters else [(config,), ()]
    last: Exception | None = None
    for args in attempts:
        if sig is not None:
            try:
                sig.bind(*args)
            except TypeError as exc:
                last = exc
                continue
        try:
            return cls(*args)
        except HiCacheError:
            raise
        except (ValueError, KeyError) as exc:
            raise BackendConfigError(f"backend {name!r}: bad configuration: {exc}") from exc
        except Exception as exc:
            raise BackendLoadError(
                f"backend {name!r}: {cls.__qualname__} failed to start: {type(exc).__name__}: {exc}"
            ) from exc
    raise BackendLoadError(
        f"backend {name!r}: cannot call {cls.__qualname__}{sig or '()'} with a storage config: {last}; "
        "its constructor must take (storage_config) or (storage_config, kwargs)"
    )


#: Stands for the pool when none is given yet: tp_lcm_size asks for page_head pools, and
#: SplitHeadsStorage refuses any other layout at registration, saying so.
_PAGE_HEAD_POOL = SimpleNamespace(layout="page_head")


def create_backend(
    name: str,
    config: HiCacheStorageConfig | None = None,
    mem_pool_host: HostKVPool | None = None,
    registry: BackendRegistry | None = None,
) -> HiCacheStorage:
    """Create, check and (when a pool is given) register the backend ``name``.

    ``name`` is an installed backend or ``dynamic``. Declared config defaults fill keys the
    caller left out. Classes that do not subclass ``HiCacheStorage`` are wrapped so that the
    result always keeps the contract, and so are subclasses of SGLang's base class (served by
    ``hicache_core.compat``), whose ``batch_*_v1`` return None. On any failure nothing is left
    open.
    """
    config = config if config is not None else HiCacheStorageConfig()
    config = with_head_split(config, mem_pool_host if mem_pool_host is not None else _PAGE_HEAD_POOL)
    if config.should_split_heads:
        # Pages shared across TP sizes: one backend per head group (plugins/split_heads.py).
        split = SplitHeadsStorage(config, lambda cfg: create_backend(name, cfg, None, registry))
        if mem_pool_host is not None:
            try:
                split.register_mem_pool_host(mem_pool_host)
            except Exception:
                _close_quietly(split)
                raise
        return split
    extra = config.extra()
    cls, display, interface_v1 = resolve_backend_class(name, extra, registry)
    if name == DYNAMIC:
        extra = {k: v for k, v in extra.items() if k not in DYNAMIC_KEYS}
    else:
        spec = (registry or default_registry()).spec(name)
        missing = [o.name for o in spec.config_options if o.required and o.name not in extra]
        if missing:
            raise BackendConfigError(
                f"backend {name!r} needs extra-config key(s) {', '.join(missing)}: "
                + "; ".join(f"{o.name}: {o.help}" for o in spec.config_options if o.name in missing)
            )
        extra = {**{k: v for k, v in spec.defaults().items() if v is not None}, **extra}
    config = replace(config, extra_config=extra)
    check_contract_version(cls, display)
    if not issubclass(cls, HiCacheStorage):
        missing_m = missing_methods(cls)
        if missing_m:
            raise BackendLoadError(
                f"backend {display!r}: {cls.__module__}.{cls.__qualname__} is not a storage backend: "
                f"it lacks {', '.join(missing_m)}; implement SGLang's HiCacheStorage methods or "
                "subclass hicache_core.HiCacheStorage"
            )
    # SGLang's own classes (a real sglang installed) get SGLang's own config object, and what
    # hicache knows about them (hicache_core.compat.sglang_known).
    sglang_class = is_real_sglang_class(cls)
    instance = _instantiate(cls, to_sglang_config(config) if sglang_class else config, display)
    backend: HiCacheStorage
    if isinstance(instance, HiCacheStorage) and not is_sglang_shaped(cls):
        backend = instance
    else:
        known = known_sglang_class(cls) if sglang_class else None
        try:
            backend = DuckTypedBackend(
                instance, config, _adapted_v1(cls, name, interface_v1, registry), display, known=known,
                namespace_keys=sglang_class or is_sglang_shaped(cls),
            )
        except Exception:
            _close_quietly(instance)  # refused after it was built: it may hold connections
            raise
    if mem_pool_host is not None:
        try:
            backend.register_mem_pool_host(mem_pool_host)
        except Exception:
            _close_quietly(backend)
            raise
    return backend


def _close_quietly(backend: Any) -> None:
    """Close a backend being given up on; its close failing must not hide why."""
    close = getattr(backend, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception:
        log.debug("closing a refused backend raised", exc_info=True)
