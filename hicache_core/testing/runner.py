"""Run the conformance kit from code: ``run_kit(target) -> KitReport``.

``hicache check`` uses it, and so can any program that holds a backend class or factory (the
core's own tests run it against a gallery of deliberately broken backends). The kit runs in
this process through ``pytest.main`` over ``hicache_core.testing.check_suite``, with an empty
pytest configuration and a temporary directory of its own, so the caller's settings, conftest
files and pytest temp dirs stay out of it; the target reaches the suite through the config's
stash.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage

#: The model name the kit writes pages under unless the target says otherwise.
CHECK_MODEL_NAME = "hicache-check"


@dataclass
class KitTarget:
    """What the kit runs against: how to open the backend, and with which config and pool."""

    name: str
    open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage]
    storage_config: HiCacheStorageConfig = field(
        default_factory=lambda: HiCacheStorageConfig(model_name=CHECK_MODEL_NAME, extra_config={})
    )
    #: Overrides of the kit's ``pool_shape`` (``page_size``, ``layer_num``, ...), if any.
    pool_shape: dict[str, Any] | None = None
    #: The installed backend name, for a writer that is spawned (``create_backend(name)``).
    backend_name: str | None = None
    #: How the kill -9 check starts its writer: ``fork`` or ``spawn`` (needs ``backend_name``).
    kill9_writer: str = "fork"

    @classmethod
    def installed(cls, name: str, extra_config: dict[str, Any] | None = None) -> KitTarget:
        """An installed backend (or ``dynamic``) created through ``create_backend``."""
        from hicache_core.plugins.factory import create_backend

        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend(name, config)

        config = HiCacheStorageConfig(model_name=CHECK_MODEL_NAME, extra_config=dict(extra_config or {}))
        return cls(name, _open, config, backend_name=name)


TARGET_KEY = pytest.StashKey[KitTarget]()


@dataclass
class Outcome:
    """One kit test's result: ``passed``, ``skipped``, ``failed`` or ``error``, and why."""

    test: str
    outcome: str = "passed"
    detail: str = ""
    duration: float = 0.0


@dataclass
class KitReport:
    outcomes: list[Outcome]
    exit_code: int

    def named(self, outcome: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == outcome]

    @property
    def failures(self) -> list[Outcome]:
        """Tests that failed or errored."""
        return [o for o in self.outcomes if o.outcome in ("failed", "error")]

    @property
    def conforms(self) -> bool:
        """True when something passed and nothing failed."""
        return not self.failures and bool(self.named("passed")) and self.exit_code in (0, 5)


@dataclass
class _Collector:
    """A pytest plugin object: puts the target in the stash, records one outcome per test."""

    target: KitTarget
    results: dict[str, Outcome] = field(default_factory=dict)

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[TARGET_KEY] = self.target

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.split("::", 2)[-1]
        entry = self.results.setdefault(report.nodeid, Outcome(name))
        entry.duration += float(getattr(report, "duration", 0.0))
        if report.skipped:
            entry.outcome = "skipped"
            longrepr = report.longrepr
            entry.detail = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        elif report.failed:
            entry.outcome = "failed" if report.when == "call" else "error"
            entry.detail = _failure_line(getattr(report, "longreprtext", "") or str(report.longrepr))


def _failure_line(text: str) -> str:
    """The failure's message: the ``E`` lines that follow the last ``Failed:``/error line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    for ln in errors:
        if ln.startswith("Failed: "):
            return ln[len("Failed: "):]
    for ln in errors:
        if "Error" in ln.split(":", 1)[0]:
            return ln
    return errors[-1] if errors else (lines[-1] if lines else "")


def run_kit(
    target: KitTarget, keyword: str | None = None, verbose: bool = False, extra_args: list[str] | None = None
) -> KitReport:
    """Run every kit test (or those matching ``keyword``) against ``target``; their outcomes."""
    from hicache_core.testing import check_suite

    collector = _Collector(target)
    with tempfile.TemporaryDirectory(prefix="hicache-check-") as tmp:
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w", encoding="utf-8") as f:
            f.write("[pytest]\n")
        argv = [
            check_suite.__file__, "-c", ini, "--rootdir", tmp, "-p", "no:cacheprovider",
            "--basetemp", os.path.join(tmp, "basetemp"),
            # No conftest.py of the directories around the installed package joins in.
            "--confcutdir", os.path.dirname(os.path.abspath(check_suite.__file__)),
            "-q" if verbose else "-qq", "--tb=short" if verbose else "--tb=no", "-p", "no:randomly",
            # The kit's own modules are imported before pytest starts: nothing to rewrite.
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
        ]
        if not verbose:
            argv += ["-rN"]  # the caller reports outcomes; no pytest summary
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            argv += ["-p", "hicache_core.testing.pytest_plugin"]
        if keyword:
            argv += ["-k", keyword]
        code = pytest.main(argv + list(extra_args or []), plugins=[collector])
    return KitReport(list(collector.results.values()), int(code))
