"""hicache extra-config keys for the AIBrix backend, and their translation to AIBrix's settings.

AIBrix is configured only through ``AIBRIX_KV_CACHE_OL_*`` environment variables, which it
reads while its cache manager is being built (and a few when the package is imported). This
module turns the operator's extra-config into such variables and applies them for exactly the
duration of that build, under a process-wide lock, then puts the environment back as it was.

Precedence, highest first: an extra-config key; an entry of the ``aibrix_env`` extra-config
dict; the variable already in the process environment; this plugin's default (only where
AIBrix's own default would break hicache's contract); AIBrix's default.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hicache_core.config_values import FALSE_WORDS, parse_bool
from hicache_core.spec.errors import BackendConfigError

ENV_PREFIX = "AIBRIX_KV_CACHE_OL_"

#: L2 connectors AIBrix 0.8 knows. "" means none: AIBrix's in-memory L1 cache only.
LOCAL_CONNECTORS = ("ROCKSDB", "SHFS", "MOCK")
REMOTE_CONNECTORS: dict[str, str] = {
    "INFINISTORE": "an InfiniStore server (pip install infinistore; RDMA or TCP) at "
    "AIBRIX_KV_CACHE_OL_INFINISTORE_HOST_ADDR:AIBRIX_KV_CACHE_OL_INFINISTORE_SERVICE_PORT",
    "HPKV": "an HPKV server at AIBRIX_KV_CACHE_OL_HPKV_REMOTE_ADDR:AIBRIX_KV_CACHE_OL_HPKV_REMOTE_PORT",
    "PRISKV": "a PrisKV server at AIBRIX_KV_CACHE_OL_PRISKV_REMOTE_ADDR:AIBRIX_KV_CACHE_OL_PRISKV_REMOTE_PORT",
    "PRIS": "a PrisKV server (PRIS is AIBrix's older name for PRISKV)",
    "EIC": "an EIC cluster described by AIBRIX_KV_CACHE_OL_EIC_CONFIG_FILE",
}
CONNECTORS = ("", *LOCAL_CONNECTORS, *REMOTE_CONNECTORS)
BLOCK_LAYOUTS = ("NCLD", "LCND")
EVICTION_POLICIES = ("S3FIFO", "LRU", "FIFO")
INGESTION_TYPES = ("ALL", "HOT", "EVICTED")


@dataclass(frozen=True)
class Setting:
    """One extra-config key that stands for one AIBrix environment variable."""

    key: str
    env: str
    kind: type
    help: str
    #: Applied when neither extra-config nor the environment set the variable; None keeps
    #: AIBrix's own default.
    plugin_default: str | None = None
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("l2_backend", ENV_PREFIX + "L2_CACHE_BACKEND", str,
            "AIBrix L2 connector: none (in-memory L1 only), ROCKSDB, SHFS (files), MOCK, or a remote "
            "one (INFINISTORE, HPKV, PRISKV, EIC)", choices=CONNECTORS),
    Setting("l1_enabled", ENV_PREFIX + "L1_CACHE_ENABLED", bool,
            "keep AIBrix's in-memory L1 cache in front of the connector (AIBrix default: true)"),
    Setting("l1_capacity_gb", ENV_PREFIX + "L1_CACHE_CAPACITY_GB", float,
            "L1 capacity in GiB (AIBrix default 10); AIBrix reserves it in whole 1 GiB slabs"),
    Setting("l1_eviction_policy", ENV_PREFIX + "L1_CACHE_EVICTION_POLICY", str,
            "L1 eviction policy: S3FIFO (AIBrix default), LRU or FIFO", choices=EVICTION_POLICIES),
    Setting("namespace", ENV_PREFIX + "L2_CACHE_NAMESPACE", str,
            "L2 namespace (AIBrix default 'aibrix'); part of the connector's directory or key space"),
    Setting("ingestion_type", ENV_PREFIX + "L2_CACHE_INGESTION_TYPE", str,
            "which L1 pages AIBrix writes to L2: ALL (this plugin's default, so a stored page is in "
            "L2 when set() returns), HOT (AIBrix's default) or EVICTED", plugin_default="ALL",
            choices=INGESTION_TYPES),
    Setting("ingestion_max_inflight_tokens", ENV_PREFIX + "L2_CACHE_INGESTION_MAX_INFLIGHT_TOKENS", int,
            "0 (default) writes to L2 synchronously; above 0 AIBrix writes in the background and "
            "drops writes past this many tokens in flight"),
    Setting("double_get_threshold", ENV_PREFIX + "DOUBLE_GET_THRESHOLD", str,
            "when AIBrix asks L2 for pages L1 lacks; this plugin's default '1' asks for every "
            "missing page (AIBrix's '4,0.1' would report pages that are only in L2 as missing)",
            plugin_default="1"),
    Setting("per_token_timeout_ms", ENV_PREFIX + "L2_CACHE_PER_TOKEN_TIMEOUT_MS", int,
            "L2 time budget per token in ms (AIBrix default 20); a slower L2 read counts as a miss"),
    Setting("chunk_size", ENV_PREFIX + "CHUNK_SIZE", int,
            "tokens per AIBrix call (AIBrix default 512); batches are split into chunks of this size"),
    Setting("rocksdb_root", ENV_PREFIX + "ROCKSDB_ROOT", str,
            "directory of the ROCKSDB connector (AIBrix default ~/.kv_cache_ol/rocksdb)"),
    Setting("rocksdb_ttl_s", ENV_PREFIX + "ROCKSDB_TTL_S", int,
            "seconds RocksDB keeps a page (AIBrix default 600)"),
    Setting("shfs_root", ENV_PREFIX + "SHFS_ROOT", str,
            "directory of the SHFS (shared file system) connector (AIBrix default ~/.kv_cache_ol/shfs)"),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}

#: Keys that are this plugin's own, not AIBrix variables.
OWN_KEYS = {
    "block_layout": "AIBrix block layout the pages are stored in: NCLD (default) or LCND",
    "aibrix_env": "dict of further AIBRIX_KV_CACHE_OL_* variables (e.g. remote connector addresses)",
}

#: Variables this plugin pins, whatever the environment says, with the reason.
FORCED_ENV: dict[str, tuple[str, str]] = {
    ENV_PREFIX + "BLOCK_SIZE": ("-1", "one AIBrix block must be exactly one hicache page"),
    ENV_PREFIX + "TOKEN_VALIDATION_ENABLED": (
        "0", "pages are keyed by their hashes, which AIBrix supports only without token validation"
    ),
    ENV_PREFIX + "DEVICE": ("cpu", "the AIBrix cache sits beside the host pool in host memory"),
}


def _as_env_value(setting: Setting, value: Any) -> str:
    """Validate ``value`` for ``setting`` and spell it the way AIBrix parses it."""
    where = f"extra-config key {setting.key!r}"
    if setting.kind is bool:
        try:
            return "1" if parse_bool(value) else "0"
        except ValueError:
            raise BackendConfigError(f"{where} must be true or false, got {value!r}") from None
    if setting.kind in (int, float):
        try:
            number = setting.kind(value)
        except (TypeError, ValueError):
            raise BackendConfigError(
                f"{where} must be a{'n integer' if setting.kind is int else ' number'}, got {value!r}"
            ) from None
        if number < 0:
            raise BackendConfigError(f"{where} must not be negative, got {value!r}")
        return str(number)
    text = str(value).strip()
    if setting.key == "l2_backend":
        text = "" if text.lower() in ("", "none", "off") else text.upper()
    elif setting.choices:
        text = text.upper()
    if setting.choices and text not in setting.choices:
        shown = ", ".join(c or "none" for c in setting.choices)
        raise BackendConfigError(f"{where} is {value!r}; use one of {shown}")
    return text


@dataclass(frozen=True)
class AIBrixSettings:
    """The validated configuration of one AIBrix backend instance."""

    #: Variables to set while the cache manager is built (on top of the process environment).
    overlay: dict[str, str] = field(default_factory=dict)
    block_layout: str = "NCLD"

    def effective(self, env: str) -> str | None:
        """The value ``env`` will have for AIBrix: overlay first, then the process environment."""
        if env in self.overlay:
            return self.overlay[env]
        return os.environ.get(env)

    @property
    def connector(self) -> str:
        """The L2 connector AIBrix will open ("" for none)."""
        return (self.effective(ENV_PREFIX + "L2_CACHE_BACKEND") or "").strip().upper()

    @property
    def l1_enabled(self) -> bool:
        return (self.effective(ENV_PREFIX + "L1_CACHE_ENABLED") or "1").strip().lower() in ("1", "true")


def parse_settings(extra: Mapping[str, Any]) -> AIBrixSettings:
    """Validate the extra-config and work out the environment overlay for AIBrix.

    Unknown keys are left alone: the extra-config also carries the controller's own knobs.
    """
    overlay: dict[str, str] = {}
    raw_env = extra.get("aibrix_env") or {}
    if not isinstance(raw_env, Mapping):
        raise BackendConfigError(
            f"extra-config key 'aibrix_env' must be a dict of {ENV_PREFIX}* variables, got {type(raw_env).__name__}"
        )
    for name, value in raw_env.items():
        if not str(name).startswith(ENV_PREFIX):
            raise BackendConfigError(
                f"extra-config 'aibrix_env' entry {name!r} is not an AIBrix variable; names start with {ENV_PREFIX}"
            )
        setting = next((s for s in SETTINGS if s.env == name), None)
        overlay[str(name)] = _as_env_value(setting, value) if setting else str(value)

    for setting in SETTINGS:
        if extra.get(setting.key) is not None:
            overlay[setting.env] = _as_env_value(setting, extra[setting.key])
        elif setting.env in overlay:
            continue
        elif setting.env in os.environ:
            # Validate what the operator exported too, so a typo fails here with a clear message.
            _as_env_value(setting, os.environ[setting.env])
        elif setting.plugin_default is not None:
            overlay[setting.env] = setting.plugin_default

    layout = str(extra.get("block_layout") or "NCLD").strip().upper()
    if layout not in BLOCK_LAYOUTS:
        raise BackendConfigError(
            f"extra-config key 'block_layout' is {extra.get('block_layout')!r}; use NCLD or LCND"
        )

    for env, (forced, why) in FORCED_ENV.items():
        given = overlay.get(env, os.environ.get(env))
        if given is not None and given.strip().lower() != forced and not (
            forced == "0" and given.strip().lower() in FALSE_WORDS
        ):
            raise BackendConfigError(f"{env}={given!r} cannot be used with hicache ({why}); unset it")
        overlay[env] = forced

    settings = AIBrixSettings(overlay=overlay, block_layout=layout)
    if not settings.l1_enabled and not settings.connector:
        raise BackendConfigError(
            "AIBrix needs a cache to store into: l1_enabled is false and no l2_backend is set; "
            "set l2_backend (e.g. ROCKSDB or SHFS) or enable L1"
        )
    return settings


# One lock for the whole process: os.environ is shared by every thread.
_ENV_LOCK = threading.RLock()


@contextlib.contextmanager
def aibrix_environment(overlay: Mapping[str, str]) -> Iterator[None]:
    """Set ``overlay`` in ``os.environ`` for the duration of the block, then restore it exactly.

    Held under a process-wide lock so two backends being built at once cannot see each
    other's variables. Code outside hicache that reads the environment meanwhile may see them.
    """
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name in overlay}
        try:
            os.environ.update(overlay)
            yield
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
