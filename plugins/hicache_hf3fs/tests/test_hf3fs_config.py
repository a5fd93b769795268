"""Settings from SGLang's JSON file and extra-config, mount detection, and client choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hicache_hf3fs.config import CONFIG_ENV, Hf3fsSettings, rank_file_path, resolve_settings
from hicache_hf3fs.mounts import Mount, hf3fs_mount_of, mount_of, parse_mounts
from hicache_hf3fs.selection import choose_client, metadata_namespace

from hicache_core import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError

MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
hf3fs.stage /hf3fs/stage fuse.3fs rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0
tmpfs /hf3fs/stage/tmp tmpfs rw 0 0
/dev/sdb1 /data/my\\040disk xfs rw 0 0
"""


def cfg(**extra: object) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(model_name="m", extra_config=dict(extra))


def test_defaults_are_sglangs() -> None:
    s = resolve_settings(cfg())
    assert (s.file_path_prefix, s.file_size, s.numjobs, s.entries, s.client_timeout) == (
        "/data/hicache", 1 << 40, 16, 8, 5.0,
    )
    assert s.metadata_server_url == "" and s.client == "auto" and s.allow_non_3fs is False


def test_json_file_from_the_env_var_then_extra_config_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hf3fs.json"
    path.write_text(json.dumps({
        "file_path_prefix": "/hf3fs/stage/kv", "file_size": 1 << 30, "numjobs": 4, "entries": 16,
        "metadata_server_url": "http://10.0.0.1:18000/", "client_timeout": 7,
    }))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    s = resolve_settings(cfg(numjobs=2))
    assert s.file_path_prefix == "/hf3fs/stage/kv" and s.file_size == 1 << 30 and s.entries == 16
    assert s.numjobs == 2  # extra-config over the file
    assert s.metadata_server_url == "http://10.0.0.1:18000" and s.client_timeout == 7.0


def test_config_path_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"file_path_prefix": str(tmp_path / "x"), "file_size": 4096}))
    s = resolve_settings(cfg(config_path=str(path)))
    assert s.file_size == 4096


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"file_size": "lots"}, "file_size"),
        ({"file_size": 0}, "file_size"),
        ({"numjobs": -1}, "numjobs"),
        ({"entries": True}, "entries"),
        ({"client": "nfs"}, "client"),
        ({"allow_non_3fs": "maybe"}, "allow_non_3fs"),
        ({"metadata_server_url": "10.0.0.1:18000"}, "metadata_server_url"),
        ({"file_path_prefix": "/data/"}, "file_path_prefix"),
        ({"file_sise": 10}, "file_sise"),
    ],
)
def test_bad_values_name_the_field(extra: dict[str, object], field: str) -> None:
    with pytest.raises(BackendConfigError, match=field):
        resolve_settings(cfg(**extra))


def test_unreadable_or_bad_json_file(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="cannot read"):
        resolve_settings(cfg(config_path=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BackendConfigError, match="not valid JSON"):
        resolve_settings(cfg(config_path=str(bad)))


def test_sglang_mock_switch_selects_the_file_client() -> None:
    assert resolve_settings(cfg(use_mock_hf3fs_client=True)).client == "file"


def test_rank_files() -> None:
    s = Hf3fsSettings(file_path_prefix="/hf3fs/kv")
    assert rank_file_path(s, HiCacheStorageConfig(tp_rank=3, tp_size=4)) == "/hf3fs/kv.3.bin"
    assert rank_file_path(s, HiCacheStorageConfig(tp_rank=3, tp_size=4, is_mla_model=True)) == "/hf3fs/kv.mla.0.bin"


def test_mount_table_parsing_and_longest_match() -> None:
    mounts = parse_mounts(MOUNTS)
    assert Mount("/dev/sdb1", "/data/my disk", "xfs") in mounts
    m = mount_of("/hf3fs/stage/kv.0.bin", MOUNTS)
    assert m is not None and m.is_3fs and m.mount_point == "/hf3fs/stage"
    assert hf3fs_mount_of("/hf3fs/stage/tmp/kv.0.bin", MOUNTS) is None  # a tmpfs inside the 3FS mount
    assert hf3fs_mount_of("/data/kv.0.bin", MOUNTS) is None


def test_this_machine_has_no_3fs_here(tmp_path: Path) -> None:
    assert hf3fs_mount_of(str(tmp_path / "kv.0.bin")) is None
    m = mount_of(str(tmp_path / "kv.0.bin"))
    assert m is not None and not m.is_3fs


def test_client_choice() -> None:
    on_3fs = Mount("hf3fs.stage", "/hf3fs/stage", "fuse.3fs")
    auto = Hf3fsSettings()
    assert choose_client(auto, "/hf3fs/stage/kv.0.bin", on_3fs, usrbio=True) == "usrbio"
    with pytest.raises(BackendConfigError, match="hf3fs_fuse"):
        choose_client(auto, "/hf3fs/stage/kv.0.bin", on_3fs, usrbio=False)
    assert choose_client(Hf3fsSettings(client="file"), "/hf3fs/stage/kv.0.bin", on_3fs, usrbio=True) == "file"
    assert choose_client(Hf3fsSettings(allow_non_3fs=True), "/tmp/kv.0.bin", None, usrbio=True) == "file"
    with pytest.raises(BackendConfigError, match="client is 'usrbio'"):
        choose_client(Hf3fsSettings(client="usrbio"), "/hf3fs/stage/kv.0.bin", on_3fs, usrbio=False)


def test_shared_namespace_is_the_path_inside_the_3fs_mount(tmp_path: Path) -> None:
    # Two nodes with different mount points name the same 3FS file alike.
    a = metadata_namespace("/mnt/a/kv/x.0.bin", Mount("3fs", "/mnt/a", "fuse.3fs"))
    b = metadata_namespace("/hf3fs/kv/x.0.bin", Mount("3fs", "/hf3fs", "fuse.3fs"))
    assert a == b == "3fs:/kv/x.0.bin"
    assert metadata_namespace(str(tmp_path / "x.0.bin"), None) == str((tmp_path / "x.0.bin").resolve())
