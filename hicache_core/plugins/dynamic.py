"""SGLang's ``dynamic`` backend: a class named in the extra config, imported on demand.

Extra-config keys (SGLang's names): ``backend_name``, ``module_path``, ``class_name`` and
optionally ``interface_v1`` (1 = the class implements the zero-copy methods).

Importing a module named in a request is code execution: a module runs its import-time code
before anything can check the class. So what an HTTP attach may name is limited, and checked
before anything is imported (``check_dynamic_request``):

- by default, only modules of installed backend distributions (those that register a
  ``hicache.backends`` entry point; they are installed code the operator chose) and the
  prefixes listed in ``HICACHE_DYNAMIC_ALLOWLIST`` (comma-separated, e.g.
  ``my_company.,acme_store``);
- ``HICACHE_DYNAMIC_ALLOWLIST=*`` restores SGLang's behaviour (any importable module), for
  deployments where whoever holds the admin key may run code on the server anyway;
- ``HICACHE_DYNAMIC_ALLOWLIST`` set but empty disables dynamic backends over HTTP.

In-process callers (Python code, ``hicache serve --hicache-storage-backend dynamic`` at start,
``hicache check``) chose the module themselves; for them ``HICACHE_DYNAMIC_ALLOWLIST``, when
set, limits ``module_path`` and, unset, any module may be named, as in SGLang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from hicache_core.plugins.registry import import_target
from hicache_core.spec.errors import BackendConfigError, BackendLoadError

DYNAMIC_ALLOWLIST_ENV = "HICACHE_DYNAMIC_ALLOWLIST"
#: ``HICACHE_DYNAMIC_ALLOWLIST=*``: any module, as SGLang.
ALLOW_ANY = "*"
ENTRY_POINT_GROUP = "hicache.backends"
DYNAMIC_KEYS = ("backend_name", "module_path", "class_name", "interface_v1")


@dataclass(frozen=True)
class DynamicTarget:
    backend_name: str
    module_path: str
    class_name: str
    interface_v1: bool


def parse_dynamic_config(extra: dict[str, Any]) -> DynamicTarget:
    """Read and check the dynamic-backend keys; errors name the key to add or fix."""
    missing = [k for k in ("backend_name", "module_path", "class_name") if not extra.get(k)]
    if missing:
        raise BackendConfigError(
            f"dynamic backend: extra config lacks {', '.join(missing)}; give e.g. "
            '{"backend_name": "mystore", "module_path": "my_pkg.store", "class_name": "MyStore"}'
        )
    for key in ("backend_name", "module_path", "class_name"):
        if not isinstance(extra[key], str):
            raise BackendConfigError(f"dynamic backend: {key} must be a string, got {extra[key]!r}")
    raw_v1 = extra.get("interface_v1", 0)
    if raw_v1 in (0, 1, True, False, "0", "1", "true", "false", "True", "False"):
        interface_v1 = str(raw_v1).lower() in ("1", "true")
    else:
        raise BackendConfigError(f"dynamic backend: interface_v1 must be 0 or 1, got {raw_v1!r}")
    return DynamicTarget(extra["backend_name"], extra["module_path"], extra["class_name"], interface_v1)


def check_dynamic_allowed(module_path: str, environ: dict[str, str] | None = None) -> None:
    """Raise ``BackendLoadError`` when ``HICACHE_DYNAMIC_ALLOWLIST`` forbids ``module_path``."""
    env = os.environ if environ is None else environ
    raw = env.get(DYNAMIC_ALLOWLIST_ENV)
    if raw is None:
        return
    prefixes = [p.strip() for p in raw.split(",") if p.strip()]
    if ALLOW_ANY in prefixes or _matches(module_path, prefixes):
        return
    raise BackendLoadError(
        f"dynamic backend: module {module_path!r} is not allowed by {DYNAMIC_ALLOWLIST_ENV}="
        f"{raw!r}; add its package prefix to that variable to allow it"
    )


def installed_backend_packages() -> frozenset[str]:
    """Top-level packages of installed ``hicache.backends`` distributions (nothing is imported)."""
    out: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.add(ep.value.split(":")[0].split(".")[0])
        dist = getattr(ep, "dist", None)
        top = dist.read_text("top_level.txt") if dist is not None else None
        if top:
            out.update(line.strip() for line in top.splitlines() if line.strip())
    return frozenset(out)


def _matches(module_path: str, prefixes: list[str]) -> bool:
    return any(module_path == p.rstrip(".") or module_path.startswith(p.rstrip(".") + ".") for p in prefixes)


def check_dynamic_request(extra: dict[str, Any], environ: dict[str, str] | None = None) -> None:
    """Refuse (``BackendLoadError``) a dynamic ``module_path`` an HTTP attach may not import.

    See the module docstring; nothing is imported here.
    """
    target = parse_dynamic_config(extra)
    env = os.environ if environ is None else environ
    raw = env.get(DYNAMIC_ALLOWLIST_ENV)
    prefixes = [p.strip() for p in (raw or "").split(",") if p.strip()]
    if ALLOW_ANY in prefixes:
        return
    if raw is not None and not prefixes:
        raise BackendLoadError(
            f"dynamic backend: loading modules over HTTP is disabled ({DYNAMIC_ALLOWLIST_ENV} is set but empty); "
            f"set {DYNAMIC_ALLOWLIST_ENV} to the package prefixes to allow, or to * for any module (SGLang's "
            "behaviour), and restart the server"
        )
    if _matches(target.module_path, prefixes):
        return
    installed = installed_backend_packages()
    if target.module_path.split(".")[0] in installed:
        return
    raise BackendLoadError(
        f"dynamic backend: module {target.module_path!r} is not one an HTTP attach may import: allowed are modules "
        f"of installed backend packages ({', '.join(sorted(installed)) or 'none'})"
        + (f" and {DYNAMIC_ALLOWLIST_ENV}={raw!r}" if raw else "")
        + f". To allow it, start the server with {DYNAMIC_ALLOWLIST_ENV}={target.module_path.split('.')[0]} "
        f"(comma-separated prefixes; * allows any module, as SGLang)"
    )


def load_dynamic_class(extra: dict[str, Any], environ: dict[str, str] | None = None) -> tuple[type, DynamicTarget]:
    """Import the class a dynamic config names, after the allowlist check."""
    target = parse_dynamic_config(extra)
    check_dynamic_allowed(target.module_path, environ)
    obj = _import_with_sglang_shim(target)
    if not isinstance(obj, type):
        raise BackendLoadError(
            f"dynamic backend {target.backend_name!r}: {target.module_path}.{target.class_name} is a "
            f"{type(obj).__name__}, not a class; class_name must name the storage class"
        )
    return obj, target


def _import_with_sglang_shim(target: DynamicTarget) -> Any:
    """Import the target; when it fails only because ``sglang`` is missing, retry with the shim.

    Backends written for SGLang import its base class from ``sglang.srt.mem_cache``; hicache
    serves those modules itself (``hicache_core.compat.sglang_shim``) unless a real sglang is
    installed, which always wins.
    """
    from hicache_core.compat import sglang_shim

    where = f"{target.module_path}:{target.class_name}"
    what = f"dynamic backend {target.backend_name!r}"
    try:
        return import_target(where, what=what)
    except BackendLoadError as exc:
        missing = sglang_shim.missing_sglang_module(exc)
        if missing is None or not sglang_shim.install(reason=f"{target.module_path} imports {missing}"):
            raise
    try:
        return import_target(where, what=what)
    except BackendLoadError as exc:
        missing = sglang_shim.missing_sglang_module(exc)
        if missing is None:
            raise
        raise BackendLoadError(
            f"{what}: {target.module_path} imports {missing}, which hicache's SGLang shim does not "
            f"provide (it provides {', '.join(sglang_shim.provided_modules())}); install sglang "
            "to run this backend"
        ) from exc

