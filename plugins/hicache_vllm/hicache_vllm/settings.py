"""The connector's settings: vLLM's ``kv_connector_extra_config``, checked with clear errors.

```json
{"backend": "file",                        // a name exactly as `hicache backends` lists it
 "backend_config": {"path": "/tmp/l3"},    // that backend's extra-config (its README)
 "model_id": "meta-llama/Llama-3.1-8B",    // optional: the model part of the key namespace
 "staging_mib": 256,                       // optional: host staging pool size
 "load": true, "save": true,               // optional: read from / write to L3
 "async_save": true}                       // optional: store pages off the engine's step
```

``backend_config`` may carry ``fault_injection`` (hicache's failure-injection wrapper, as the
reference node reads it) to test what a failing L3 does to the engine: nothing but misses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KNOWN_KEYS = ("backend", "backend_config", "model_id", "staging_mib", "load", "save", "async_save")


class ConnectorConfigError(ValueError):
    """``kv_connector_extra_config`` is wrong; the message says what to write instead."""


def _flag(extra: Mapping[str, Any], key: str) -> bool:
    value = extra.get(key, True)
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConnectorConfigError(f"HiCacheConnector: {key!r} must be true or false, got {value!r}")


@dataclass(frozen=True)
class ConnectorSettings:
    backend: str
    backend_config: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    staging_mib: int = 256
    load: bool = True
    save: bool = True
    async_save: bool = True

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ConnectorSettings:
        extra = dict(extra or {})
        unknown = sorted(set(extra) - set(KNOWN_KEYS))
        if unknown:
            raise ConnectorConfigError(
                f"HiCacheConnector: unknown kv_connector_extra_config key(s) {', '.join(unknown)}; "
                f"known: {', '.join(KNOWN_KEYS)} (backend keys go inside 'backend_config')"
            )
        backend = extra.get("backend")
        if not isinstance(backend, str) or not backend:
            raise ConnectorConfigError(
                "HiCacheConnector needs kv_connector_extra_config.backend: a backend name as "
                "`hicache backends` lists it, e.g. {\"backend\": \"file\", \"backend_config\": "
                "{\"path\": \"/tmp/hicache-l3\"}}"
            )
        backend_config = extra.get("backend_config") or {}
        if not isinstance(backend_config, Mapping):
            raise ConnectorConfigError(
                f"HiCacheConnector: 'backend_config' must be an object (the backend's extra-config), "
                f"got {backend_config!r}"
            )
        staging = extra.get("staging_mib", 256)
        try:
            staging_mib = int(staging)
        except (TypeError, ValueError):
            staging_mib = -1
        if staging_mib <= 0:
            raise ConnectorConfigError(f"HiCacheConnector: 'staging_mib' must be a positive integer, got {staging!r}")
        model_id = extra.get("model_id")
        if model_id is not None and not isinstance(model_id, str):
            raise ConnectorConfigError(f"HiCacheConnector: 'model_id' must be a string, got {model_id!r}")
        return cls(
            backend=backend,
            backend_config=dict(backend_config),
            model_id=model_id or None,
            staging_mib=staging_mib,
            load=_flag(extra, "load"),
            save=_flag(extra, "save"),
            async_save=_flag(extra, "async_save"),
        )
