"""Where a backend's extra-config schema comes from: its class's ``config_model``.

A backend declares its extra-config keys as ``config_model: ClassVar[type[BaseModel]]`` on its
class (hicache-file's is ``hicache_file.config_model.FileBackendConfig``); the controller
validates an attach against it (``attach_check.check_config_model``): unknown keys refused with
a did-you-mean hint, wrong types refused, empty or relative paths refused. Fields marked
``json_schema_extra={"public": True}`` may be shown by the status endpoints (``shown_config``).
"""

from __future__ import annotations


def config_schema(name: str, cls: type | None = None) -> dict[str, object] | None:
    """The JSON schema of ``name``'s extra config (its class's ``config_model``), or None.

    For ``hicache backends --json``: a listing can show it without creating the backend.
    """
    model = getattr(cls, "config_model", None) if cls is not None else None
    if model is None or not hasattr(model, "model_json_schema"):
        return None
    schema: dict[str, object] = model.model_json_schema()
    return schema
