"""What of a backend's config may leave the process: an allow-list, never a deny-list.

A backend's extra config can hold credentials under any name (``token``, ``accessKey``,
``pwd``, NIXL's ``backend_params``, a DSN in a URL...). Guessing secrets by key name misses
some, so the status endpoint, ``GET /hicache/storage-backend`` and ``hicache storage status``
show a value only when its key is known to be safe:

- the controller's own keys (prefetch knobs, the failure-injection settings) and the
  ``dynamic`` loader's keys;
- the fields a backend class declares public: ``config_public_fields`` (a ClassVar tuple), or
  the fields of its ``config_model`` marked ``json_schema_extra={"public": True}``.

Every other key is shown as ``"***"`` (so a reader still sees it was given). Shown strings
have URL userinfo (``scheme://user:pass@host``) removed, because an address field can carry
a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hicache_core.controller.faults import FAULT_KEY
from hicache_core.controller.policies import KNOB_KEYS, SGLANG_CONTROLLER_KEYS

HIDDEN = "***"

#: Keys the controller and the dynamic loader read themselves: never secret.
CORE_PUBLIC_FIELDS: frozenset[str] = frozenset(
    {*KNOB_KEYS, *SGLANG_CONTROLLER_KEYS, FAULT_KEY, "backend_name", "module_path", "class_name", "interface_v1"}
)

#: ``scheme://user[:password]@`` in a URL or DSN (also inside longer strings).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]*@")


def strip_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it removed."""
    return _USERINFO.sub(r"\g<scheme>", text)


def public_fields(backend: str, cls: type | None = None) -> frozenset[str]:
    """The extra-config keys of ``backend`` (class ``cls`` when known) that may be shown."""
    declared: set[str] = set()
    if cls is not None:
        fields = getattr(cls, "config_public_fields", None)
        if isinstance(fields, (tuple, list, set, frozenset)):
            declared.update(str(f) for f in fields)
        model = getattr(cls, "config_model", None)
        for name, info in getattr(model, "model_fields", {}).items():
            extra = getattr(info, "json_schema_extra", None)
            if isinstance(extra, dict) and extra.get("public") is True:
                declared.add(name)
                if info.alias:
                    declared.add(info.alias)
    return frozenset(declared | CORE_PUBLIC_FIELDS)


def shown_config(extra: dict[str, Any] | None, allowed: Iterable[str]) -> dict[str, Any] | None:
    """``extra`` as it may be shown: allowed keys' values (userinfo stripped), others ``***``."""
    if extra is None:
        return None
    allow = frozenset(allowed)
    return {str(k): (_plain(v) if str(k) in allow else HIDDEN) for k, v in extra.items()}


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy; strings lose URL userinfo; nested dicts keep only plain values."""
    if isinstance(value, str):
        return strip_userinfo(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, dict):
        # A nested object under a public key (the fault-injection settings): numbers and
        # flags only; strings could be anything.
        return {str(k): (v if isinstance(v, (bool, int, float)) or v is None else
                         (strip_userinfo(v) if isinstance(v, str) and str(k) == "switch" else HIDDEN))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return strip_userinfo(str(value))
