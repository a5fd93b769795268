"""A NIXL agent with one storage plugin chosen by configuration.

``auto`` walks 3FS > POSIX > GDS_MT > GDS, then OBJ, and keeps the first plugin that this
NIXL build has, that creates here, and that moves data between DRAM and files (or objects).
Every plugin not chosen gets a sentence saying why, for ``get_stats`` and the log.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from hicache_core.spec.errors import BackendLoadError
from hicache_nixl.runtime import import_nixl_api, library_load_error
from hicache_nixl.settings import AUTO_ORDER, NIXL_PLUGIN_NAMES, NixlSettings

log = logging.getLogger(__name__)

#: The memory segment a plugin's pages live in.
SEGMENT = {"3FS": "FILE", "POSIX": "FILE", "GDS_MT": "FILE", "GDS": "FILE", "OBJ": "OBJ"}


@dataclass
class Selection:
    """The plugin in use and why the others are not."""

    plugin: str  # hicache's name: 3FS, POSIX, GDS_MT, GDS or OBJ
    nixl_name: str  # NIXL's name: HF3FS, POSIX, ...
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict, repr=False)  # may hold credentials

    @property
    def segment(self) -> str:
        return SEGMENT[self.plugin]

    @property
    def flavour(self) -> str:
        return "obj" if self.plugin == "OBJ" else "file"

    def report(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "nixl_plugin": self.nixl_name, "reason": self.reason,
                "skipped": dict(self.skipped)}


def _params_for(plugin: str, settings: NixlSettings) -> dict[str, str]:
    if plugin == "POSIX":
        return settings.posix_params()
    if plugin == "OBJ":
        return settings.obj_params()
    return dict(settings.backend_params)


class NixlSession:
    """One NIXL agent (no listener thread, no UCX) holding the chosen storage backend."""

    def __init__(self, settings: NixlSettings) -> None:
        api = import_nixl_api()
        self.settings = settings
        self.version = _nixl_version()
        config = api.nixl_agent_config(
            enable_prog_thread=False, enable_listen_thread=False, backends=[],
            # STRICT: the agent is shared by the engine's prefetch and backup threads.
            sync_mode=api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
        )
        self.agent: Any = api.nixl_agent(f"hicache-nixl-{os.getpid()}-{uuid.uuid4().hex[:8]}", config)
        self.available = list(self.agent.get_plugin_list())
        self.selection = self._select()
        log.info(
            "nixl: using NIXL %s plugin %s (%s)%s", self.version, self.selection.plugin, self.selection.reason,
            "".join(f"; {k} skipped: {v}" for k, v in self.selection.skipped.items()),
        )

    @property
    def backend(self) -> str:
        return self.selection.nixl_name

    def _select(self) -> Selection:
        s = self.settings
        candidates = AUTO_ORDER if s.plugin == "auto" else (s.plugin,)
        skipped: dict[str, str] = {}
        for plugin in candidates:
            why = self._try_create(plugin)
            if why:
                skipped[plugin] = why
                continue
            chosen_reason = (
                f"configured (plugin={plugin})" if s.plugin != "auto"
                else f"auto: first of {' > '.join(AUTO_ORDER)} that creates here"
            )
            if s.plugin == "auto":
                for later in AUTO_ORDER[AUTO_ORDER.index(plugin) + 1:]:
                    skipped[later] = self._not_tried(later, plugin)
            return Selection(plugin, NIXL_PLUGIN_NAMES[plugin], chosen_reason, skipped,
                             _params_for(plugin, s))
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        if s.plugin == "auto":
            raise BackendLoadError(f"nixl: no NIXL storage plugin can be used here ({detail})")
        raise BackendLoadError(f"nixl: the configured plugin {s.plugin} cannot be used here: {detail}")

    def _not_tried(self, plugin: str, chosen: str) -> str:
        """Why a lower-priority plugin was not used, plus whether it could load here at all."""
        reason = f"not tried: {chosen} comes first in auto order"
        nixl_name = NIXL_PLUGIN_NAMES[plugin]
        if plugin == "OBJ":
            return reason + ("" if self.settings.bucket else "; and no bucket is configured")
        if nixl_name not in self.available:
            return f"{reason}; and this NIXL build has no {nixl_name} plugin"
        why = library_load_error(nixl_name)  # the dynamic loader's own message, if any
        return f"{reason}; and it would not load here: {why}" if why else reason

    def _try_create(self, plugin: str) -> str:
        """Create the plugin's backend on the agent; '' on success, else why not."""
        s = self.settings
        nixl_name = NIXL_PLUGIN_NAMES[plugin]
        if nixl_name not in self.available:
            return (f"NIXL {self.version} has no {nixl_name} plugin here (it offers "
                    f"{', '.join(self.available) or 'none'}); {library_load_error(nixl_name)}")
        if plugin == "OBJ" and not s.bucket:
            return "no bucket configured: set extra-config 'bucket' (or HICACHE_NIXL_BUCKET / AWS_DEFAULT_BUCKET)"
        if plugin == "OBJ" and s.max_attempts is not None:
            # The AWS SDK takes its retry budget from the environment (legacy retry mode
            # ignores it), once per process: without a bound, a request to a dead endpoint
            # retries for ~25 s.
            os.environ.setdefault("AWS_RETRY_MODE", "standard")
            os.environ["AWS_MAX_ATTEMPTS"] = str(s.max_attempts)
        try:
            self.agent.create_backend(nixl_name, _params_for(plugin, s))
        except Exception as exc:
            cause = library_load_error(nixl_name) if "NOT_FOUND" in str(exc) else ""
            hint = {"GDS": "needs CUDA and cuFile (libcudart, libcufile)",
                    "GDS_MT": "needs CUDA and cuFile (libcudart, libcufile)",
                    "3FS": "needs the 3FS usrbio client (libhf3fs_api_shared)",
                    "OBJ": "check bucket, endpoint and credentials"}.get(plugin, "")
            parts = [f"create_backend({nixl_name}) failed: {type(exc).__name__}: {exc}", cause, hint]
            return "; ".join(p for p in parts if p)
        mems = set(self.agent.get_backend_mem_types(nixl_name))
        need = {"DRAM_SEG", f"{SEGMENT[plugin]}_SEG"}
        if not need <= mems:
            return f"created, but it moves {', '.join(sorted(mems))}, not {' and '.join(sorted(need))}"
        return ""


def _nixl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("nixl", "nixl-cu12", "nixl-cu13", "nixl-rocm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"
