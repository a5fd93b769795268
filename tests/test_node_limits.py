"""Capacity flags against memory, and the flags' own bounds (issue 16, item 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hicache_core.node import NodeConfig
from hicache_core.node.capacity import check_capacity
from hicache_core.node.presets import resolve_shape


def test_tiers_beyond_memory_are_refused_with_the_numbers() -> None:
    config = NodeConfig(shape=resolve_shape("llama3-70b"), device_capacity_tokens=1 << 20, dp_size=2)
    with pytest.raises(ValueError) as info:
        config.check_memory(device_is_cpu=True, available=64 << 30)
    msg = str(info.value)
    # 320 KiB/token: L2 = 2 x 1 Mi tokens = 640 GiB per rank, L1 320 GiB per rank, 2 ranks.
    assert "640.00 GiB x 2 rank(s)" in msg and "320.00 GiB x 2 rank(s)" in msg and "64.00 GiB" in msg
    assert "--device-capacity-tokens" in msg


def test_gpu_l1_is_checked_against_free_gpu_memory() -> None:
    with pytest.raises(ValueError, match=r"L1 needs 2\.00 GiB of GPU memory .* 1\.00 GiB is free"):
        check_capacity(1 << 30, 1 << 20, 2, device_is_cpu=False, available=1 << 40, cuda_free=1 << 30)
    check_capacity(1 << 29, 1 << 20, 1, device_is_cpu=False, available=1 << 40, cuda_free=1 << 30)


def test_negative_host_capacity_is_an_error_not_one_page() -> None:
    with pytest.raises(ValueError, match="--host-capacity-tokens -5 is below one page"):
        NodeConfig(host_capacity_tokens=-5).validate()


@pytest.mark.parametrize("flags", [["--device-capacity-tokens", str(10**15)], ["--host-capacity-tokens", "-64"]])
def test_serve_exits_2_with_a_message_not_a_traceback(flags: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "serve", "--port", "1", *flags],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "hicache serve:" in out.stderr
