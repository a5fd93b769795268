"""The conformance kit proves itself: it fails every broken backend of the gallery, naming the
broken property, and passes the correct reference backends.

Each run is the whole kit, through ``hicache_core.testing.runner.run_kit`` (what ``hicache
check`` runs), against a backend class of ``tests/broken_backends``. A kit that passes a
broken backend is a failing test here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from broken_backends.defects import GALLERY
from broken_backends.reference import DirStore, MemoryStore

from hicache_core import HiCacheStorageConfig
from hicache_core.testing.runner import KitReport, KitTarget, run_kit


def _run(cls: type, tmp_path: Path, keyword: str | None = None) -> KitReport:
    extra = {"store": f"{cls.__name__}-{uuid.uuid4().hex}", "root": str(tmp_path / "pages")}
    config = HiCacheStorageConfig(model_name="gallery-model", extra_config=extra)
    return run_kit(KitTarget(cls.__name__, cls, config), keyword=keyword)


def _summary(report: KitReport) -> str:
    return "\n".join(f"  {o.outcome}: {o.test}: {o.detail}" for o in report.outcomes if o.outcome != "passed")


@pytest.mark.parametrize("cls", list(GALLERY), ids=lambda c: c.__name__)
def test_the_kit_fails_a_broken_backend_naming_the_property(cls: type, tmp_path: Path) -> None:
    catcher, words = GALLERY[cls]
    report = _run(cls, tmp_path)
    assert not report.conforms, f"the kit passed {cls.__name__}, which is broken: {cls.__doc__}"
    outcomes = {o.test: o for o in report.outcomes}
    assert catcher in outcomes, f"{catcher} did not run against {cls.__name__}:\n{_summary(report)}"
    caught = outcomes[catcher]
    assert caught.outcome == "failed", (
        f"{catcher} {caught.outcome} against {cls.__name__} ({cls.__doc__}):\n{_summary(report)}"
    )
    assert words in caught.detail, f"{catcher}'s message does not name the property ({words!r}): {caught.detail}"
    # Every failure says which property in words, before any detail.
    for failure in report.failures:
        assert failure.outcome == "failed" and ": " in failure.detail, f"{failure.test}: {failure.detail}"


@pytest.mark.parametrize("cls", [MemoryStore, DirStore], ids=lambda c: c.__name__)
def test_the_kit_passes_a_correct_backend(cls: type, tmp_path: Path) -> None:
    report = _run(cls, tmp_path)
    assert not report.failures, _summary(report)
    assert report.conforms
    ran = {o.test for o in report.named("passed")}
    for check in ("test_namespace_isolation[dtype]", "test_layouts_read_each_other[mha-page_head]",
                  "test_v1_scattered_host_indices[mla-layer_first]", "test_odd_keys",
                  "test_v1_write_tensor_read[mha-layer_first]"):
        assert check in ran, f"{check} did not pass against {cls.__name__}:\n{_summary(report)}"
    skipped = {o.test: o.detail for o in report.named("skipped")}
    if cls is DirStore:
        assert not skipped, skipped
        assert "test_persistent_after_kill_9" in ran
    else:
        assert set(skipped) == {"test_persistent_across_reopen", "test_persistent_after_kill_9"}, skipped
        assert all("not persistent" in why for why in skipped.values()), skipped


def test_a_kit_run_can_be_narrowed_and_reports_skips_with_reasons(tmp_path: Path) -> None:
    report = _run(MemoryStore, tmp_path, keyword="persistent")
    assert {o.test for o in report.outcomes} == {"test_persistent_across_reopen", "test_persistent_after_kill_9"}
    assert all(o.outcome == "skipped" and "capabilities.persistent is False" in o.detail for o in report.outcomes)


def test_hicache_check_names_the_broken_property(tmp_path: Path) -> None:
    """The same verdict from the command line: ``hicache check dynamic`` on a gallery backend."""
    import json
    import os
    import subprocess
    import sys

    tests_dir = str(Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("HICACHE_PLUGINS", "HICACHE_DYNAMIC_ALLOWLIST")}
    env.update(COLUMNS="400", PYTHONPATH=os.pathsep.join([tests_dir, env.get("PYTHONPATH", "")]))
    config = {"backend_name": "cp_blind", "module_path": "broken_backends.defects", "class_name": "CpBlind",
              "store": uuid.uuid4().hex}
    result = subprocess.run(
        [sys.executable, "-m", "hicache_core.cli.main", "check", "dynamic", "--config", json.dumps(config),
         "-k", "namespace_isolation"], capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "does not conform" in result.stdout
    assert "namespace isolation: a page written for attention-cp rank 0 (of 2) was served to attention-cp" in result.stdout


@pytest.mark.parametrize("cls", ["DirStore", "TornOnKill"])
def test_kill_9_with_a_spawned_writer(cls: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer as a fresh interpreter (``kill9_writer = 'spawn'``), created by name through
    ``dynamic``: the correct store passes, the in-place writer is caught with a torn page."""
    import os

    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("HICACHE_DYNAMIC_ALLOWLIST", raising=False)
    monkeypatch.setenv("GALLERY_SLOW_WRITES", "1")  # TornOnKill pauses mid-page; this process only reads
    module = "broken_backends.reference" if cls == "DirStore" else "broken_backends.defects"
    extra = {"backend_name": cls.lower(), "module_path": module, "class_name": cls, "root": str(tmp_path / "pages")}
    target = KitTarget.installed("dynamic", extra)
    target.kill9_writer = "spawn"
    report = run_kit(target, keyword="kill_9")
    (outcome,) = report.outcomes
    if cls == "DirStore":
        assert outcome.outcome == "passed", outcome
    else:
        assert outcome.outcome == "failed" and "(a torn or wrong page)" in outcome.detail, outcome
