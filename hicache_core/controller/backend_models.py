"""Typed config models (pydantic) of first-party backends whose class declares none yet.

A backend declares its extra-config keys as ``config_model: ClassVar[type[BaseModel]]`` on its
class; the controller validates an attach against it (``attach_check.check_config_model``):
unknown keys refused with a did-you-mean hint, wrong types refused, empty or relative paths
refused. Until a plugin's owner adds its own model, the models here stand in for it; the
class's own ``config_model`` always wins. Fields marked ``json_schema_extra={"public": True}``
may be shown by the status endpoints (``shown_config``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

_PUBLIC: JsonDict = {"public": True}


class FileBackendConfig(BaseModel):
    """The ``file`` backend (hicache-file)'s extra-config keys."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="directory of the page files (absolute)", json_schema_extra=_PUBLIC)
    file_storage_path: str | None = Field(None, description="SGLang's name of 'path'", json_schema_extra=_PUBLIC)
    max_bytes: int | str | None = Field(None, description="size bound in bytes ('64GiB' accepted)",
                                        json_schema_extra=_PUBLIC)
    max_pages: int | None = Field(None, ge=1, description="page-count bound", json_schema_extra=_PUBLIC)
    fsync: bool | int | str | None = Field(None, description="fsync each page", json_schema_extra=_PUBLIC)
    io_threads: int | None = Field(None, ge=1, le=64, description="threads per batch", json_schema_extra=_PUBLIC)
    checksum: str | None = Field(None, pattern="^(xxh3|crc32)$", description="xxh3 or crc32",
                                 json_schema_extra=_PUBLIC)
    remove_corrupt: bool | int | str | None = Field(None, description="delete a corrupt page file",
                                                   json_schema_extra=_PUBLIC)




#: Backend name -> model, for backends whose class declares no ``config_model`` yet.
FIRST_PARTY_MODELS: dict[str, type[BaseModel]] = {"file": FileBackendConfig}


def config_model_for(name: str) -> type | None:
    """A stand-in class carrying the core's model for ``name``, or None."""
    model = FIRST_PARTY_MODELS.get(name)
    if model is None:
        return None
    holder = type(f"{name}_config_holder", (), {"config_model": model})
    return holder


def config_schema(name: str, cls: type | None = None) -> dict[str, object] | None:
    """The JSON schema of ``name``'s extra config (its class's ``config_model``, else the core's), or None.

    For ``hicache backends --json``: a listing can show it without creating the backend.
    """
    model = getattr(cls, "config_model", None) if cls is not None else None
    if model is None:
        model = FIRST_PARTY_MODELS.get(name)
    if model is None or not hasattr(model, "model_json_schema"):
        return None
    schema: dict[str, object] = model.model_json_schema()
    return schema
