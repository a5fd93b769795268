"""Discovery of storage backends through the ``hicache.backends`` entry-point group.

Two registration forms are accepted:

- **class form** (the smallest third-party registration)::

      [project.entry-points."hicache.backends"]
      mystore = "my_pkg.store:MyStore"

- **plugin-module form** (first-party plugins)::

      [project.entry-points."hicache.backends"]
      mooncake = "hicache_mooncake.plugin"

  The module implements the pluggy hooks of ``hicache_core.plugins.hookspecs`` and returns
  ``BackendSpec`` objects with install hint, config options and capabilities.

Discovery never imports a backend's heavy dependency: plugin modules are light by contract,
and availability is decided from ``BackendSpec.requires`` (``find_spec``, which does not run
code) and the spec's ``probe``. A plugin that fails to load is listed with its error and
never breaks the listing or other plugins.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from hicache_core.plugins import hookspecs
from hicache_core.plugins.known import KNOWN_BACKENDS
from hicache_core.plugins.spec import BackendSpec
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.errors import BackendLoadError, BackendNotFoundError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hicache.backends"
ALLOWLIST_ENV = "HICACHE_PLUGINS"
DYNAMIC = "dynamic"

Status = Literal["available", "unavailable", "not installed"]


@dataclass
class BackendInfo:
    """One row of ``hicache backends``."""

    name: str
    status: Status
    distribution: str | None = None
    version: str | None = None
    reason: str = ""
    install_hint: str = ""
    description: str = ""
    source: str = ""  # "class", "plugin", "builtin" or "known"
    target: str = ""
    capabilities: list[str] = field(default_factory=list)
    config_options: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "distribution": self.distribution,
            "version": self.version,
            "reason": self.reason,
            "install_hint": self.install_hint,
            "description": self.description,
            "source": self.source,
            "target": self.target,
            "capabilities": self.capabilities,
            "config_options": self.config_options,
        }


@dataclass
class _Registration:
    spec: BackendSpec
    distribution: str | None
    version: str | None
    source: str
    error: str = ""  # load error of a class-form target, found out when checked


def allowed_plugin_names(environ: dict[str, str] | os._Environ[str] | None = None) -> set[str] | None:
    """Names allowed by ``HICACHE_PLUGINS``; None when the variable is unset (all allowed).

    Set but empty means no plugin is loaded.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _dist_of(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class BackendRegistry:
    """The backends installed here, found through entry points and described safely.

    ``entry_points_override`` (tests) replaces the installed entry points; ``environ``
    replaces ``os.environ`` for the allowlist.
    """

    def __init__(
        self,
        entry_points_override: Iterable[EntryPoint] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._eps_override = list(entry_points_override) if entry_points_override is not None else None
        self._environ = environ
        self._lock = threading.Lock()
        self._loaded = False
        self._regs: dict[str, _Registration] = {}
        self._broken: dict[str, BackendInfo] = {}
        self._conflicts: dict[str, list[str]] = {}
        self._extra: list[BackendSpec] = []

    # ------------------------------------------------------------------ registration
    def register(self, spec: BackendSpec, distribution: str | None = None, version: str | None = None) -> None:
        """Register a backend in-process (embedding engines, tests) as a plugin would."""
        with self._lock:
            self._ensure_loaded()
            self._add(spec, distribution or "<in-process>", version, "plugin")

    def _add(self, spec: BackendSpec, dist: str | None, version: str | None, source: str) -> None:
        if spec.name == DYNAMIC:
            raise ValueError(f"{dist}: the name {DYNAMIC!r} is reserved for the dynamic loader")
        prev = self._regs.get(spec.name)
        if prev is not None and prev.distribution != dist:
            owners = self._conflicts.setdefault(spec.name, [str(prev.distribution)])
            owners.append(str(dist))
            return
        self._regs[spec.name] = _Registration(spec, dist, version, source)

    def _entry_points(self) -> list[EntryPoint]:
        if self._eps_override is not None:
            return self._eps_override
        return list(entry_points(group=ENTRY_POINT_GROUP))

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        allowed = allowed_plugin_names(self._environ)
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        seen_eps: set[tuple[str, str, str | None]] = set()
        env = os.environ if self._environ is None else self._environ
        for ep in self._entry_points():
            dist, version = _dist_of(ep)
            if (ep.name, ep.value, dist) in seen_eps:  # the same dist visible twice on sys.path
                continue
            seen_eps.add((ep.name, ep.value, dist))
            try:
                ep_attr, ep_module = ep.attr, ep.module
            except Exception:  # a value importlib cannot parse must not break the listing
                self._broken[ep.name] = BackendInfo(
                    name=ep.name, status="unavailable", distribution=dist, version=version,
                    reason=f"entry point value {ep.value!r} must be 'package.module:ClassName' "
                    "or 'package.module'", source="class", target=ep.value,
                )
                continue
            if allowed is not None and ep.name not in allowed:
                self._broken[ep.name] = BackendInfo(
                    name=ep.name, status="unavailable", distribution=dist, version=version,
                    reason=f"disabled: not listed in {ALLOWLIST_ENV}={env.get(ALLOWLIST_ENV, '')!r}",
                    source="plugin" if ep_attr is None else "class", target=ep.value,
                )
                continue
            if ep_attr is not None:
                try:
                    spec = BackendSpec(name=ep.name, target=ep.value)
                except ValueError as exc:
                    self._broken[ep.name] = BackendInfo(
                        name=ep.name, status="unavailable", distribution=dist, version=version,
                        reason=str(exc), source="class", target=ep.value,
                    )
                    continue
                self._add(spec, dist, version, "class")
                continue
            try:
                module = importlib.import_module(ep_module)
                # Registration validates the module's hookimpls against the hookspecs.
                if not pm.is_registered(module):
                    pm.register(module, name=f"{dist}:{ep.value}")
                specs = []
                for impl in pm.hook.hicache_backends.get_hookimpls():
                    if impl.plugin is module:
                        returned = impl.function()
                        if not isinstance(returned, (list, tuple)):
                            raise TypeError(
                                f"hicache_backends() returned {type(returned).__name__}; return a list "
                                "of BackendSpec, e.g. [BackendSpec(name=..., target='pkg.mod:Class')]"
                            )
                        specs.extend(returned)
                if not all(isinstance(s, BackendSpec) for s in specs):
                    raise TypeError("hicache_backends() must return a list of BackendSpec objects")
            except Exception as exc:  # a broken plugin must not break discovery
                log.debug("plugin %s failed to load", ep.value, exc_info=True)
                self._broken[ep.name] = BackendInfo(
                    name=ep.name, status="unavailable", distribution=dist, version=version,
                    reason=f"plugin module {ep_module!r} failed to load: {type(exc).__name__}: {exc}",
                    source="plugin", target=ep.value,
                )
                continue
            for spec in specs:
                if allowed is not None and spec.name not in allowed and spec.name != ep.name:
                    continue
                self._add(spec, dist, version, "plugin")

    # ------------------------------------------------------------------ queries
    def names(self) -> list[str]:
        """Names that can be asked for: installed backends plus ``dynamic``."""
        with self._lock:
            self._ensure_loaded()
            return [*sorted(self._regs), DYNAMIC]

    def spec(self, name: str) -> BackendSpec:
        """The spec of an installed backend; ``BackendNotFoundError`` says how to get it."""
        with self._lock:
            self._ensure_loaded()
            if name in self._conflicts:
                raise BackendLoadError(self._conflict_reason(name))
            reg = self._regs.get(name)
            broken = self._broken.get(name)
        if reg is not None:
            return reg.spec
        if broken is not None:
            raise BackendLoadError(f"backend {name!r} is unavailable: {broken.reason}")
        known = KNOWN_BACKENDS.get(name)
        if known is not None:
            raise BackendNotFoundError(
                f"backend {name!r} ({known.description}) is not installed; run: {known.install_hint}"
            )
        raise BackendNotFoundError(
            f"unknown storage backend {name!r}; installed: {', '.join(self.names())}. "
            "Install a plugin that registers it in the 'hicache.backends' entry-point group, or "
            "use 'dynamic' with module_path and class_name in the extra config"
        )

    def _conflict_reason(self, name: str) -> str:
        owners = self._conflicts[name]
        return (
            f"backend name {name!r} is claimed by more than one distribution: {' and '.join(owners)}; "
            f"uninstall one, or list only one in {ALLOWLIST_ENV}"
        )

    def load_class(self, name: str) -> type:
        """Import and return the storage class of an installed backend."""
        spec = self.spec(name)
        reason = self._unavailable_reason(spec)
        if reason:
            raise BackendLoadError(f"backend {name!r} cannot run here: {reason}")
        cls = import_target(spec.target, what=f"backend {name!r}")
        if not isinstance(cls, type):
            raise BackendLoadError(f"backend {name!r}: {spec.target} is not a class")
        return cls

    def _unavailable_reason(self, spec: BackendSpec) -> str:
        for mod in spec.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                hint = f"; {spec.install_hint}" if spec.install_hint else ""
                return f"required module {mod!r} is not installed{hint}"
        if spec.probe is not None:
            try:
                why = spec.probe()
            except Exception as exc:
                return f"probe failed: {type(exc).__name__}: {exc}"
            if why:
                return why
        return ""

    def describe(self, deep: bool = False, load_classes: bool = True) -> list[BackendInfo]:
        """Every backend: installed (available or not), and first-party ones not installed.

        Class-form targets are imported (their capabilities live on the class) unless
        ``load_classes`` is False: then only their module is looked up, and their capabilities
        are left empty (the ``hicache`` CLI lists fast that way; ``--deep`` loads them). With
        ``deep`` every available target is imported to confirm it loads; plugin-module backends
        are otherwise never imported here (their ``requires`` and ``probe`` decide).
        """
        with self._lock:
            self._ensure_loaded()
            regs = dict(self._regs)
            broken = dict(self._broken)
            conflicts = dict(self._conflicts)
        rows: dict[str, BackendInfo] = {}
        for name, reg in regs.items():
            spec = reg.spec
            caps = spec.capabilities
            reason = self._conflict_reason(name) if name in conflicts else self._unavailable_reason(spec)
            if not reason and reg.source == "class" and not (load_classes or deep):
                reason = _module_missing(spec.target)
            elif not reason and (reg.source == "class" or deep):
                try:
                    cls = import_target(spec.target, what=f"backend {name!r}")
                    caps = getattr(cls, "capabilities", caps)
                except BackendLoadError as exc:
                    reason = str(exc)
            known = KNOWN_BACKENDS.get(name)
            rows[name] = BackendInfo(
                name=name,
                status="unavailable" if reason else "available",
                distribution=reg.distribution,
                version=reg.version,
                reason=reason,
                install_hint=spec.install_hint or (known.install_hint if known else ""),
                description=spec.description or (known.description if known else ""),
                source=reg.source,
                target=spec.target,
                capabilities=caps.names() if isinstance(caps, Capabilities) else [],
                config_options=[
                    {"name": o.name, "default": o.default, "env": o.env, "help": o.help, "required": o.required}
                    for o in spec.config_options
                ],
            )
        for name, info in broken.items():
            rows.setdefault(name, info)
        for name, known in KNOWN_BACKENDS.items():
            rows.setdefault(
                name,
                BackendInfo(
                    name=name, status="not installed", distribution=known.distribution,
                    reason=f"not installed; run: {known.install_hint}", install_hint=known.install_hint,
                    description=known.description, source="known",
                ),
            )
        rows[DYNAMIC] = BackendInfo(
            name=DYNAMIC, status="available", distribution="hicache-core", version=_core_version(),
            description="any class named by module_path and class_name in the extra config",
            source="builtin", reason="",
        )
        return sorted(rows.values(), key=lambda r: (r.name != "file", r.name == DYNAMIC, r.name))


def _core_version() -> str:
    from hicache_core.version import __version__

    return __version__


def import_target(target: str, what: str) -> Any:
    """Import ``"module:attr.path"``; errors become ``BackendLoadError`` saying what to fix."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise BackendLoadError(
            f"{what}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendLoadError(
                f"{what}: module {module_name!r} has no attribute {attr_path!r}; check the class name"
            ) from None
    return obj


_default: BackendRegistry | None = None
_default_lock = threading.Lock()


def default_registry(refresh: bool = False) -> BackendRegistry:
    """The process-wide registry over the installed entry points."""
    global _default
    with _default_lock:
        if _default is None or refresh:
            _default = BackendRegistry()
        return _default


def _module_missing(target: str) -> str:
    """Why the module of ``module:attr`` cannot be found ("" when it can), without importing it."""
    module_name = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError) as exc:
        return f"cannot import {module_name!r}: {exc}"
    return "" if found else f"module {module_name!r} is not installed"
