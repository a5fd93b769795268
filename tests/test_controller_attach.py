"""Attach, detach, status and rollback of the storage controller, against real file stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _controller_backends import (
    backup_pages,
    check_pages,
    fill_pages,
    hashes,
    make_controller,
    make_pool,
    wait_for,
)

from hicache_core import HostKVPool
from hicache_core.controller import ControllerError, PrefetchOperation, PrefetchResult, StorageController


@pytest.fixture
def pool() -> HostKVPool:
    return make_pool()


@pytest.fixture
def ctl(pool: HostKVPool) -> Iterator[StorageController]:
    c = make_controller(pool)
    yield c
    c.close()


def _roundtrip(ctl: StorageController, pool: HostKVPool, n: int = 8) -> None:
    """Back ``n`` pages up and prefetch them back; asserts the bytes."""
    hs = hashes(n)
    idx = fill_pages(pool, hs)
    done: list[list[bool]] = []
    assert ctl.backup(hs, idx, done.append)
    wait_for(lambda: bool(done))
    assert done == [[True] * n]
    pool.free(idx)
    op = ctl.prefetch(hs)
    assert op is not None
    res = _wait_complete(op)  # whatever the policy: let the worker finish first
    assert res.page_hashes == hs
    check_pages(pool, hs, res.host_indices)
    pool.free(res.host_indices)


def _extra(tmp_path: Path, name: str = "a", **more: object) -> dict[str, object]:
    return {"root": str(tmp_path / name), "prefetch_threshold": 0, **more}


def test_attach_status_detach(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    assert not ctl.attached and ctl.status()["state"] == "detached"
    msg = ctl.attach("dirstore", _extra(tmp_path), prefetch_policy="wait_complete", write_policy="write_back")
    assert "dirstore" in msg
    st = ctl.status()
    json.dumps(st)  # JSON-serialisable
    assert st["state"] == "attached" and st["backend"] == "dirstore"
    assert st["prefetch_policy"] == "wait_complete" and st["write_policy"] == "write_back"
    assert st["policies"]["prefetch_threshold"] == 0
    assert st["breaker"]["state"] == "closed"
    view = ctl.backend_view()
    assert view["hicache_storage_backend"] == "dirstore"
    assert json.loads(view["hicache_storage_backend_extra_config_json"])["root"] == str(tmp_path / "a")
    assert view["hicache_storage_prefetch_policy"] == "wait_complete"
    assert view["hicache_write_policy"] == "write_back"
    _roundtrip(ctl, pool)
    backend = ctl.backend
    assert "detached" in ctl.detach()
    assert backend is not None and backend.closed  # type: ignore[attr-defined]
    assert ctl.status()["state"] == "detached" and ctl.backend_view()["hicache_storage_backend"] is None
    # Idempotent, and the request path answers with misses.
    assert "no storage backend" in ctl.detach()
    assert ctl.prefetch(hashes(4)) is None
    got: list[list[bool]] = []
    assert ctl.backup(hashes(2), pool.pages_to_indices([0, 1]), got.append) is False
    assert got == [[False, False]]
    assert ctl.should_backup("insert") is False


def test_l3_data_survives_detach(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    ctl.attach("dirstore", _extra(tmp_path))
    hs = hashes(6)
    backup_pages(ctl, pool, hs)
    ctl.detach()
    ctl.attach("dirstore", _extra(tmp_path))
    op = ctl.prefetch(hs)
    assert op is not None
    res = _wait_complete(op)
    check_pages(pool, hs, res.host_indices)


def _wait_complete(op: PrefetchOperation) -> PrefetchResult:
    wait_for(lambda: op.done)
    return op.wait()


def test_replace_refused_without_flag(ctl: StorageController, tmp_path: Path) -> None:
    ctl.attach("dirstore", _extra(tmp_path, "a"))
    with pytest.raises(ControllerError, match=r"already attached.*replace=True"):
        ctl.attach("dirstore2", _extra(tmp_path, "b"))
    with pytest.raises(ControllerError, match="already attached"):
        ctl.attach("dirstore", _extra(tmp_path, "other-root"))
    assert ctl.status()["backend"] == "dirstore"
    assert ctl.status()["extra_config"]["root"] == str(tmp_path / "a")
    msg = ctl.attach("dirstore2", _extra(tmp_path, "b"), replace=True)
    assert "replaced 'dirstore'" in msg and ctl.status()["backend"] == "dirstore2"


def test_reattach_same_backend_updates_policies_only(ctl: StorageController, tmp_path: Path) -> None:
    ctl.attach("dirstore", _extra(tmp_path), prefetch_policy="best_effort", write_policy="write_through")
    backend = ctl.backend
    msg = ctl.attach(
        "dirstore", {**_extra(tmp_path), "prefetch_threshold": 64}, prefetch_policy="timeout",
        write_policy="write_through_selective",
    )
    assert "already attached" in msg
    assert ctl.backend is backend  # the same instance: nothing was rebuilt
    st = ctl.status()
    assert st["prefetch_policy"] == "timeout" and st["write_policy"] == "write_through_selective"
    assert st["policies"]["prefetch_threshold"] == 64
    assert ctl.should_backup("hit", 2) and not ctl.should_backup("insert")


def test_policies_persist_when_omitted(ctl: StorageController, tmp_path: Path) -> None:
    ctl.attach("dirstore", _extra(tmp_path), write_policy="write_back")
    ctl.attach("dirstore", _extra(tmp_path))  # None = keep
    assert ctl.write_policy == "write_back"


@pytest.mark.parametrize(
    ("name", "extra", "why"),
    [
        ("nosuchstore", {}, r"unknown storage backend 'nosuchstore'"),
        ("brokenctor", None, r"cannot reach the storage server"),
        ("dirstore2", {}, r"bad configuration|root"),  # the constructor's own config check
    ],
)
def test_failed_attach_keeps_previous_backend(
    ctl: StorageController, pool: HostKVPool, tmp_path: Path, name: str, extra: dict[str, object] | None, why: str
) -> None:
    ctl.attach("dirstore", _extra(tmp_path))
    before = ctl.backend
    given = _extra(tmp_path, "new") if extra is None else extra
    with pytest.raises(ControllerError, match=why):
        ctl.attach(name, given, replace=True)
    assert ctl.backend is before and ctl.status()["state"] == "attached"
    assert ctl.status()["last_error"] and ctl.metrics.snapshot()["attach_failures"] == 1
    _roundtrip(ctl, pool)  # still working


def test_layout_error_rolls_back(tmp_path: Path) -> None:
    pool = make_pool("layer_first")
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", _extra(tmp_path))
        before = ctl.backend
        with pytest.raises(ControllerError, match=r"refused the host pool.*page_first"):
            ctl.attach("pagestore", _extra(tmp_path, "p"), replace=True)
        assert ctl.backend is before
        _roundtrip(ctl, pool)
    finally:
        ctl.close()


def test_failed_first_attach_stays_detached(ctl: StorageController) -> None:
    with pytest.raises(ControllerError):
        ctl.attach("nosuchstore")
    assert not ctl.attached and ctl.status()["state"] == "detached"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"prefetch_policy": "eager"}, "unknown prefetch policy 'eager'"),
        ({"write_policy": "sometimes"}, "unknown write policy 'sometimes'"),
        ({"switch_mode": "now"}, "unknown switch_mode"),
        ({"extra_config": {"prefetch_threshold": -1}}, "prefetch_threshold"),
        ({"extra_config": {"prefetch_timeout_base": "soon"}}, "prefetch_timeout_base"),
        ({"extra_config": {"fault_injection": {"fail_prob": 2}}}, "fail_prob"),
    ],
)
def test_bad_arguments_are_refused_with_reason(
    ctl: StorageController, tmp_path: Path, kwargs: dict[str, object], why: str
) -> None:
    args: dict[str, object] = {"extra_config": _extra(tmp_path)}
    args.update(kwargs)
    if isinstance(args["extra_config"], dict):
        args["extra_config"] = {**_extra(tmp_path), **args["extra_config"]}  # type: ignore[dict-item]
    with pytest.raises(ControllerError, match=why):
        ctl.attach("dirstore", **args)  # type: ignore[arg-type]
    assert not ctl.attached


def test_idle_mode_uses_engine_idle_check(pool: HostKVPool, tmp_path: Path) -> None:
    busy = {"msg": "scheduler is not idle. #queue-req=3 #running-req=1"}
    ctl = make_controller(pool, idle_check=lambda: busy["msg"])
    try:
        with pytest.raises(ControllerError) as err:
            ctl.attach("dirstore", _extra(tmp_path), switch_mode="idle")
        assert str(err.value) == "Reject attach: scheduler is not idle. #queue-req=3 #running-req=1"
        ctl.attach("dirstore", _extra(tmp_path))  # quiesce mode ignores the engine's load
        with pytest.raises(ControllerError, match=r"^Reject detach: scheduler is not idle"):
            ctl.detach(switch_mode="idle")
        assert ctl.attached
        busy["msg"] = None  # type: ignore[assignment]
        assert "detached" in ctl.detach(switch_mode="idle")
    finally:
        ctl.close()


def test_extra_config_secrets_redacted(ctl: StorageController, tmp_path: Path) -> None:
    ctl.attach("dirstore", {**_extra(tmp_path), "secret_key": "hunter2", "password": "pw"})
    st = json.dumps(ctl.status()) + json.dumps(ctl.backend_view())
    assert "hunter2" not in st and "pw\"" not in st


def test_dynamic_backend(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    extra = {
        **_extra(tmp_path), "backend_name": "mydir", "module_path": "_controller_backends", "class_name": "DirStore",
        "interface_v1": 1,
    }
    ctl.attach("dynamic", extra)
    assert ctl.status()["backend"] == "dynamic"
    _roundtrip(ctl, pool)


def test_closed_controller_refuses_attach(pool: HostKVPool, tmp_path: Path) -> None:
    ctl = make_controller(pool)
    ctl.attach("dirstore", _extra(tmp_path))
    ctl.close()
    assert not ctl.attached
    with pytest.raises(ControllerError, match="closed"):
        ctl.attach("dirstore", _extra(tmp_path))


def test_old_backend_serves_while_new_one_builds(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    import threading
    import time

    ctl.attach("dirstore", _extra(tmp_path))
    outcome: list[str] = []
    t = threading.Thread(
        target=lambda: outcome.append(ctl.attach("slowstore", {**_extra(tmp_path, "slow"), "ctor_delay_s": 0.6}, replace=True))
    )
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    st = ctl.status()  # does not wait for the attach in progress
    assert time.monotonic() - t0 < 0.3 and st["backend"] == "dirstore"
    _roundtrip(ctl, pool)  # the old backend still serves during the build
    t.join(5)
    assert outcome and "replaced 'dirstore' with storage backend 'slowstore'" in outcome[0]
    assert ctl.status()["backend"] == "slowstore"


def test_attach_timeout_keeps_previous(pool: HostKVPool, tmp_path: Path) -> None:
    ctl = make_controller(pool, attach_timeout_s=0.2)
    try:
        ctl.attach("dirstore", _extra(tmp_path))
        before = ctl.backend
        with pytest.raises(ControllerError, match=r"attach_timeout_s=0\.2"):
            ctl.attach("slowstore", {**_extra(tmp_path, "slow"), "ctor_delay_s": 0.6}, replace=True)
        assert ctl.backend is before
        _roundtrip(ctl, pool)
    finally:
        ctl.close()


def test_admin_call_from_a_backup_callback(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    """An on_done that detaches (runs on the backup thread) must neither deadlock nor raise."""
    ctl.attach("dirstore", _extra(tmp_path))
    hs = hashes(2)
    idx = fill_pages(pool, hs)
    said: list[str] = []
    ctl.backup(hs, idx, lambda results: said.append(ctl.detach()))
    wait_for(lambda: bool(said))
    assert "detached" in said[0] and not ctl.attached


def test_idle_mode_waits_for_storage_workers(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    ctl.attach("dirstore", {**_extra(tmp_path), "fault_injection": {"delay_ms": 400}})
    hs = hashes(2)
    idx = fill_pages(pool, hs)
    done: list[list[bool]] = []
    ctl.backup(hs, idx, done.append)
    with pytest.raises(ControllerError, match=r"^Reject attach: storage workers are not idle\. #prefetch=0 #backup=1"):
        ctl.attach("dirstore2", _extra(tmp_path, "b"), replace=True, switch_mode="idle")
    wait_for(lambda: bool(done))
    assert done == [[True, True]]
    ctl.attach("dirstore2", _extra(tmp_path, "b"), replace=True, switch_mode="idle")
    assert ctl.status()["backend"] == "dirstore2"


def test_no_threads_left_after_close(pool: HostKVPool, tmp_path: Path) -> None:
    import threading

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("hicache-") and "-r7" in t.name]

    ctl = make_controller(pool, rank=7)
    ctl.attach("dirstore", _extra(tmp_path))
    _roundtrip(ctl, pool)
    ctl.attach("dirstore2", _extra(tmp_path, "b"), replace=True)
    assert ours()  # workers of the attached backend
    ctl.close()
    wait_for(lambda: not ours())


def test_backend_view_of_non_json_values(ctl: StorageController, tmp_path: Path) -> None:
    ctl.attach("dirstore", {**_extra(tmp_path), "ctor_delay_s": 0.0, "where": tmp_path})
    view = json.loads(ctl.backend_view()["hicache_storage_backend_extra_config_json"])
    assert view["root"] == str(tmp_path / "a") and view["ctor_delay_s"] == 0.0
    assert view["where"] == "***"  # not in DirStore's allow-list: never shown, whatever its type
    assert json.loads(json.dumps(ctl.status()))["extra_config"]["where"] == "***"
