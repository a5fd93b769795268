"""Where a backend's extra-config schema comes from: its class's ``config_model``.

A backend declares its extra-config keys as ``config_model: ClassVar[type[BaseModel]]`` on its
class (hicache-file's is ``hicache_file.config_model.FileBackendConfig``); the controller
validates an attach against it (``attach_check.check_config_model``): unknown keys refused with
a did-you-mean hint, wrong types refused, empty or relative paths refused. Fields marked
``json_schema_extra={"public": True}`` may be shown by the status endpoints (``shown_config``).
"""

from __future__ import annotations

from typing import Any


def config_schema(name: str, cls: type | None = None, options: Any = ()) -> dict[str, object] | None:
    """The JSON schema of ``name``'s extra config, or None when nothing declares one.

    From the class's ``config_model`` when it has one; else from the plugin's declared
    ``ConfigOption``s (names, help, defaults, env vars; the keys attach accepts).
    For ``hicache backends --json --deep``.
    """
    model = getattr(cls, "config_model", None) if cls is not None else None
    if model is None or not hasattr(model, "model_json_schema"):
        if not options:
            return None
        props: dict[str, object] = {}
        for opt in options:
            prop: dict[str, object] = {"description": opt.help}
            if opt.default is not None:
                prop["default"] = opt.default
            if opt.env:
                prop["env"] = opt.env
            props[opt.name] = prop
        return {"title": f"{name} extra config", "type": "object", "properties": props,
                "required": [o.name for o in options if o.required], "additionalProperties": False}
    schema: dict[str, object] = model.model_json_schema()
    return schema
