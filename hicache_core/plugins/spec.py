"""What a plugin declares about a backend, before (and without) importing it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hicache_core.spec.capabilities import Capabilities

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class ConfigOption:
    """One configuration key a backend accepts (in extra-config, and optionally an env var)."""

    name: str
    default: Any = None
    help: str = ""
    env: str | None = None
    required: bool = False


@dataclass(frozen=True)
class BackendSpec:
    """A backend as its plugin describes it.

    ``target`` is ``"module:Class"``, imported only when the backend is created (or checked
    in depth). ``requires`` lists top-level module names that must be importable; they are
    located with ``importlib.util.find_spec``, which does not run them. ``probe`` is a cheap
    callable (it must not import the heavy dependency either) that returns None when the
    backend can run here, or a sentence saying why not.
    """

    name: str
    target: str
    description: str = ""
    install_hint: str = ""
    capabilities: Capabilities | None = None
    config_options: tuple[ConfigOption, ...] = field(default_factory=tuple)
    requires: tuple[str, ...] = field(default_factory=tuple)
    probe: Callable[[], str | None] | None = None
    docs_url: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"backend name {self.name!r} is invalid: use lower-case letters, digits, '_' or '-', "
                "starting with a letter"
            )
        if not _TARGET.match(self.target):
            raise ValueError(
                f"backend {self.name!r}: target {self.target!r} must be 'package.module:ClassName'"
            )
        for mod in self.requires:
            if "." in mod:
                raise ValueError(
                    f"backend {self.name!r}: requires entry {mod!r} must be a top-level module name "
                    "(find_spec on a dotted name imports its parents)"
                )

    def defaults(self) -> dict[str, Any]:
        """The default value of every declared config option."""
        return {o.name: o.default for o in self.config_options}
