"""Data-parallel ranks driven together: all-or-nothing attach with rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _controller_backends import make_controller, make_pool

from hicache_core import HiCacheStorageConfig
from hicache_core.controller import ControllerError, ControllerGroup, StorageController


@pytest.fixture
def ranks() -> Iterator[list[StorageController]]:
    ctls = [
        make_controller(make_pool(pages=64), rank=r, storage_config=HiCacheStorageConfig(model_name="m", dp_rank=r))
        for r in range(3)
    ]
    yield ctls
    for c in ctls:
        c.close()


def test_group_attach_detach_status(ranks: list[StorageController], tmp_path: Path) -> None:
    group = ControllerGroup(ranks)
    msg = group.attach("dirstore", {"root": str(tmp_path / "l3")}, write_policy="write_back")
    assert msg.count("rank ") == 3 and "; " in msg
    assert group.attached and group.write_policy == "write_back"
    st = group.status()
    assert st["state"] == "attached" and [r["rank"] for r in st["ranks"]] == [0, 1, 2]
    assert group.backend_view()["hicache_storage_backend"] == "dirstore"
    assert group.detach().count("detached") == 3
    assert group.status()["state"] == "detached"


def test_failed_rank_rolls_back_fresh_attach(ranks: list[StorageController], tmp_path: Path) -> None:
    group = ControllerGroup(ranks)
    # Rank 2 cannot attach: its host pool uses a layout the backend refuses.
    ranks[2] = make_controller(make_pool("layer_first", pages=64), rank=2)
    group = ControllerGroup(ranks)
    with pytest.raises(ControllerError) as err:
        group.attach("pagestore", {"root": str(tmp_path / "l3")})
    text = str(err.value)
    assert "rank 0: attached" in text and "rank 2: Reject attach" in text and "page_first" in text
    assert [c.status()["state"] for c in ranks] == ["detached"] * 3  # ranks 0 and 1 rolled back


def test_first_rank_failure_leaves_every_rank_untouched(ranks: list[StorageController], tmp_path: Path) -> None:
    group = ControllerGroup(ranks)
    group.attach("dirstore", {"root": str(tmp_path / "old")}, prefetch_policy="timeout")
    # The new store's root is a file: its constructor fails on the first rank.
    blocker = tmp_path / "new"
    blocker.write_text("a file where the store wants a directory")
    with pytest.raises(ControllerError) as err:
        group.attach("dirstore2", {"root": str(blocker)}, replace=True)
    assert "rank 0: Reject attach" in str(err.value) and "rank 1: not attempted" in str(err.value)
    for c in ranks:
        st = c.status()
        assert st["state"] == "attached" and st["backend"] == "dirstore" and st["prefetch_policy"] == "timeout"
        assert st["extra_config"]["root"] == str(tmp_path / "old")


def test_rollback_after_partial_success(ranks: list[StorageController], tmp_path: Path) -> None:
    group = ControllerGroup(ranks)
    group.attach("dirstore", {"root": str(tmp_path / "old")})
    bad = make_controller(make_pool("layer_first", pages=64), rank=2)
    bad.attach("dirstore", {"root": str(tmp_path / "old")})
    ranks[2].close()
    ranks[2] = bad
    group = ControllerGroup(ranks)
    with pytest.raises(ControllerError) as err:
        group.attach("pagestore", {"root": str(tmp_path / "new")}, replace=True)
    text = str(err.value)
    assert "rank 0: replaced 'dirstore' with" in text and "rank 1: replaced" in text and "rank 2: Reject" in text
    for c in ranks:  # ranks 0 and 1 went back to the previous backend
        assert c.status()["backend"] == "dirstore" and c.status()["extra_config"]["root"] == str(tmp_path / "old")


def test_group_needs_controllers() -> None:
    with pytest.raises(ValueError):
        ControllerGroup([])


def test_idle_mode_checks_every_rank_first(tmp_path: Path) -> None:
    busy = {1: "scheduler is not idle. #queue-req=2 #running-req=0"}
    ctls = [make_controller(make_pool(pages=64), rank=r, idle_check=lambda r=r: busy.get(r)) for r in range(3)]
    group = ControllerGroup(ctls)
    try:
        with pytest.raises(ControllerError) as err:
            group.attach("dirstore", {"root": str(tmp_path)}, switch_mode="idle")
        assert str(err.value) == "rank 1: Reject attach: scheduler is not idle. #queue-req=2 #running-req=0"
        assert not any(c.attached for c in ctls)
        busy.clear()
        group.attach("dirstore", {"root": str(tmp_path)}, switch_mode="idle")
        assert group.attached
    finally:
        group.close()


def test_rollback_restores_the_knobs_in_force_not_the_first_attach(
    ranks: list[StorageController], tmp_path: Path
) -> None:
    group = ControllerGroup(ranks)
    group.attach("dirstore", {"root": str(tmp_path / "old"), "prefetch_threshold": 0})
    group.attach("dirstore", {"root": str(tmp_path / "old"), "prefetch_threshold": 512})  # knobs only
    bad = make_controller(make_pool("layer_first", pages=64), rank=2)
    bad.attach("dirstore", {"root": str(tmp_path / "old"), "prefetch_threshold": 512})
    ranks[2].close()
    ranks[2] = bad
    group = ControllerGroup(ranks)
    with pytest.raises(ControllerError):
        group.attach("pagestore", {"root": str(tmp_path / "new")}, replace=True)
    for c in ranks:
        st = c.status()
        assert st["backend"] == "dirstore" and st["policies"]["prefetch_threshold"] == 512
        assert st["extra_config"]["prefetch_threshold"] == 512
