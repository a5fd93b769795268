"""Reading and validating the Mooncake settings (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hicache_mooncake.config import DEFAULTS, GiB, MiB, load_settings, parse_size

from hicache_core.spec.errors import BackendConfigError

MASTER = {"master_server_address": "10.0.0.1:50051"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1073741824, GiB),
        ("4gb", 4 * GiB),
        ("4GB", 4 * GiB),
        ("16 MiB", 16 * MiB),
        ("512mb", 512 * MiB),
        ("1.5g", int(1.5 * GiB)),
        ("2048", 2048),
        ("64kb", 64 * 1024),
        (3.0, 3),
    ],
)
def test_sizes_accept_ints_and_unit_strings(value: object, expected: int) -> None:
    assert parse_size(value, "global_segment_size", "test") == expected


@pytest.mark.parametrize("value", ["4 gigs", "-1", -5, True, "gb", [1], "1.5.2gb"])
def test_bad_sizes_name_the_field_and_source(value: object) -> None:
    with pytest.raises(BackendConfigError) as exc:
        parse_size(value, "local_buffer_size", "env MOONCAKE_LOCAL_BUFFER_SIZE")
    msg = str(exc.value)
    assert "local_buffer_size" in msg and "MOONCAKE_LOCAL_BUFFER_SIZE" in msg


def test_defaults_are_sglangs() -> None:
    s = load_settings(MASTER, environ={})
    assert s.master_server_address == "10.0.0.1:50051"
    assert s.metadata_server == DEFAULTS["metadata_server"] == "P2PHANDSHAKE"
    assert s.protocol == "tcp" and s.device_name == "" and s.local_hostname == "localhost"
    assert s.global_segment_size == 4 * GiB and s.local_buffer_size == 16 * MiB
    assert s.sources["master_server_address"] == "extra-config"
    assert s.sources["protocol"] == "default"


def test_missing_master_says_where_to_set_it() -> None:
    with pytest.raises(BackendConfigError) as exc:
        load_settings({}, environ={})
    msg = str(exc.value)
    assert "master_server_address" in msg and "MOONCAKE_MASTER" in msg and "MOONCAKE_CONFIG_PATH" in msg


def test_env_vars_are_read() -> None:
    env = {
        "MOONCAKE_MASTER": "192.168.1.2:50051",
        "MOONCAKE_TE_META_DATA_SERVER": "http://192.168.1.2:8080/metadata",
        "MOONCAKE_LOCAL_HOSTNAME": "192.168.1.3",
        "MOONCAKE_PROTOCOL": "RDMA",
        "MOONCAKE_DEVICE": "mlx5_0",
        "MOONCAKE_GLOBAL_SEGMENT_SIZE": "8gb",
        "MOONCAKE_LOCAL_BUFFER_SIZE": "32mb",
    }
    s = load_settings({}, environ=env)
    assert s.master_server_address == "192.168.1.2:50051"
    assert s.metadata_server == "http://192.168.1.2:8080/metadata"
    assert s.local_hostname == "192.168.1.3"
    assert s.protocol == "rdma"  # normalised
    assert s.device_name == "mlx5_0"
    assert s.global_segment_size == 8 * GiB and s.local_buffer_size == 32 * MiB
    assert s.sources["device_name"] == "env MOONCAKE_DEVICE"


def test_config_file_then_extra_config_win_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.json"
    path.write_text(json.dumps({
        "master_server_address": "10.1.1.1:50051",
        "metadata_server": "http://10.1.1.1:8080/metadata",
        "global_segment_size": "1gb",
        "protocol": "tcp",
    }))
    env = {"MOONCAKE_CONFIG_PATH": str(path), "MOONCAKE_PROTOCOL": "rdma", "MOONCAKE_LOCAL_HOSTNAME": "10.1.1.9"}
    s = load_settings({"global_segment_size": 0}, environ=env)
    assert s.master_server_address == "10.1.1.1:50051"  # file
    assert s.protocol == "tcp"  # file beats env
    assert s.local_hostname == "10.1.1.9"  # env where the file is silent
    assert s.global_segment_size == 0  # extra config beats the file
    assert s.sources["master_server_address"] == f"config file {path}"


def test_config_path_key_in_extra_config(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"master_server_address": "h:1234"}))
    assert load_settings({"config_path": str(path)}, environ={}).master_server_address == "h:1234"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), ("{not json", "not readable JSON"), ("[1, 2]", "JSON object")],
)
def test_bad_config_file_is_named(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackendConfigError) as exc:
        load_settings({}, environ={"MOONCAKE_CONFIG_PATH": str(path)})
    assert fragment in str(exc.value) and "MOONCAKE_CONFIG_PATH" in str(exc.value)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"master_server_address": "no-port"}, "master_server_address"),
        ({"master_server_address": "h:99999"}, "master_server_address"),
        ({"master_server_address": 50051}, "master_server_address"),
        ({**MASTER, "protocol": "carrier-pigeon"}, "protocol"),
        ({**MASTER, "metadata_server": "nonsense"}, "metadata_server"),
        ({**MASTER, "local_hostname": ""}, "local_hostname"),
        ({**MASTER, "local_hostname": 7}, "local_hostname"),
        ({**MASTER, "global_segment_size": "lots"}, "global_segment_size"),
        ({**MASTER, "local_buffer_size": 0}, "local_buffer_size"),
    ],
)
def test_bad_fields_are_named(extra: dict[str, object], field: str) -> None:
    with pytest.raises(BackendConfigError) as exc:
        load_settings(extra, environ={})
    assert field in str(exc.value)


def test_ha_master_and_metadata_schemes_pass() -> None:
    s = load_settings(
        {"master_server_address": "etcd://10.0.0.1:2379;10.0.0.2:2379", "metadata_server": "etcd://10.0.0.1:2379"},
        environ={},
    )
    assert s.master_server_address.startswith("etcd://") and s.metadata_server.startswith("etcd://")


def test_foreign_extra_keys_are_ignored() -> None:
    s = load_settings({**MASTER, "prefetch_threshold": 256, "whatever": "x"}, environ={})
    assert s.master_server_address == MASTER["master_server_address"]
