"""What an attach checks before it answers 200: the config against the backend's schema,
and that the store can really write and read a page.

Config schema. A backend class may declare ``config_model: ClassVar[type[pydantic.BaseModel]]``
(its extra-config keys as typed fields). The controller then refuses, before creating the
backend, a key the model does not know (with a did-you-mean hint), a value of the wrong type,
and an empty or relative path in any field whose name ends in ``path`` or ``dir`` (unless
the field is marked ``json_schema_extra={"relative_ok": True}``). Backends that declare no
model get the same path rule for their declared ``path``-like options.

Probe. After the host pool is registered, one page of random bytes is written under a key
of the reserved namespace ``hicache-probe.`` (page keys are hex digests, so no real page can
ever have that name; a fresh key each time), read back into another host page, compared, and
deleted (where the store can delete). A store that
cannot write (a read-only directory, a full store, a refusing server) is refused at attach
with what failed, instead of accepting and then failing every backup.
"""

from __future__ import annotations

import difflib
import os
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from hicache_core.spec.errors import BackendConfigError

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.spec.storage import HiCacheStorage

#: The reserved key namespace of attach probes (never a hex page hash).
PROBE_KEY_PREFIX = "hicache-probe."

#: Keys every backend's extra config may hold besides its own (the controller's, SGLang's).
COMMON_KEYS: frozenset[str] = frozenset({
    "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token", "fault_injection",
    "backend_name", "module_path", "class_name", "interface_v1", "tp_lcm_size", "should_split_heads",
    "interface_v2",
})


def probe_key(rank: int = 0) -> str:
    """A fresh key per probe. Not one fixed key: stores that keep the first page written under
    a key (SGLang's HiCacheFile) would then answer an earlier probe's bytes. A store without
    ``delete`` keeps one small probe page per attach."""
    return f"{PROBE_KEY_PREFIX}r{rank}.{secrets.token_hex(6)}"


def _is_path_name(name: str) -> bool:
    low = name.lower()
    return low.endswith("path") or low.endswith("dir") or low.endswith("_directory")


def check_paths(backend: str, extra: dict[str, Any], names: Iterable[str] | None = None,
                relative_ok: Iterable[str] = ()) -> None:
    """Refuse an empty or relative value of a path-like key (named in ``names``, or any)."""
    allowed_relative = set(relative_ok)
    for key, value in extra.items():
        if names is not None and key not in names:
            continue
        if not _is_path_name(key) or key in allowed_relative or key in COMMON_KEYS:
            continue
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
            raise BackendConfigError(
                f"backend {backend!r}: extra-config {key!r} is empty; give an absolute directory, "
                f'e.g. {{"{key}": "/var/cache/hicache"}}'
            )
        text = os.path.expanduser(os.fspath(value))
        if "://" not in text and not os.path.isabs(text):
            raise BackendConfigError(
                f"backend {backend!r}: extra-config {key!r} is the relative path {os.fspath(value)!r}, which "
                f"would depend on the server's working directory ({os.getcwd()}); give an absolute path, "
                f"e.g. {os.path.abspath(text)!r}"
            )


def unknown_key_message(backend: str, unknown: list[str], known: Iterable[str]) -> str:
    known_list = sorted(set(known))
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known_list, n=1, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"backend {backend!r}: unknown extra-config key(s) {', '.join(parts)}; known keys: "
            f"{', '.join(known_list) or 'none'}")


def check_declared_keys(backend: str, extra: dict[str, Any], declared: Iterable[str]) -> None:
    """Refuse extra-config keys that are neither declared by the backend's plugin nor common."""
    known = set(declared) | COMMON_KEYS
    unknown = [k for k in extra if k not in known]
    if unknown:
        raise BackendConfigError(unknown_key_message(backend, unknown, set(declared)))


def check_config_model(backend: str, cls: type | None, extra: dict[str, Any]) -> None:
    """Validate ``extra`` against ``cls.config_model`` when the class declares one."""
    model = getattr(cls, "config_model", None) if cls is not None else None
    if model is None or not hasattr(model, "model_validate"):
        return
    from pydantic import ValidationError

    fields = getattr(model, "model_fields", {})
    known = set(COMMON_KEYS)
    relative_ok: set[str] = set()
    for name, info in fields.items():
        known.add(name)
        if info.alias:
            known.add(info.alias)
        schema_extra = getattr(info, "json_schema_extra", None)
        if isinstance(schema_extra, dict) and schema_extra.get("relative_ok") is True:
            relative_ok.add(name)
    unknown = [k for k in extra if k not in known]
    if unknown:
        raise BackendConfigError(unknown_key_message(backend, unknown, known - COMMON_KEYS))
    own = {k: v for k, v in extra.items() if k not in COMMON_KEYS or k in fields}
    try:
        model.model_validate(own)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}" for err in exc.errors()
        )
        raise BackendConfigError(f"backend {backend!r}: bad extra-config: {problems}") from None
    check_paths(backend, extra, names=known, relative_ok=relative_ok)


def probe_store(backend: HiCacheStorage, pool: HostKVPool, name: str, rank: int = 0) -> str | None:
    """Write one page under a probe key, read it back, compare, delete it.

    Returns None when the store works, else a sentence saying what failed. Returns None
    without probing when the host pool has no two free pages (nothing to probe with).
    """
    ps = pool.page_size
    idx = pool.alloc(2 * ps)
    if idx is None:
        return None
    try:
        src, dst = pool.indices_to_pages(idx)[:2]
        pattern = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8)
        view_dtype = pool.read_page(src).dtype
        pool.write_page(src, pattern.view(view_dtype))
        pool.write_page(dst, torch.zeros(pool.page_bytes, dtype=torch.uint8).view(view_dtype))
        key = probe_key(rank)
        try:
            wrote = _twice(lambda: backend.batch_set_v1([key], pool.pages_to_indices([src])))
        except Exception as exc:
            return f"storage backend {name!r} cannot write a page: {type(exc).__name__}: {exc}"
        if not wrote or not bool(wrote[0]):
            return (f"storage backend {name!r} refused to store a probe page (a read-only directory, a full "
                    "store or missing permissions); fix the store or its config and attach again")
        try:
            got = _twice(lambda: backend.batch_get_v1([key], pool.pages_to_indices([dst])))
        except Exception as exc:
            return f"storage backend {name!r} stored a probe page but cannot read it: {type(exc).__name__}: {exc}"
        finally:
            _delete_quietly(backend, key)
        if not got or not bool(got[0]):
            return f"storage backend {name!r} stored a probe page but answers a miss when reading it back"
        if not torch.equal(pool.read_page(dst).view(torch.uint8), pattern):
            return f"storage backend {name!r} returned different bytes for a probe page it stored"
        return None
    finally:
        pool.free(idx)


def _twice(call: Callable[[], list[bool]]) -> list[bool]:
    """``call()``, tried again once if it raised (as the session retries page calls)."""
    try:
        return call()
    except Exception:
        return call()


def _delete_quietly(backend: HiCacheStorage, key: str) -> None:
    try:
        backend.delete(key)
    except Exception:
        pass
