"""Checking the tier sizes a node is asked for against the memory the machine has.

A size that cannot fit ends with a message giving the numbers (asked, available, per tier
and rank) instead of a torch allocation traceback, before anything is allocated.
"""

from __future__ import annotations

import os


def available_host_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo, else physical memory; None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int | float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def check_capacity(device_bytes_per_rank: int, host_bytes_per_rank: int, ranks: int, device_is_cpu: bool,
                   available: int | None = None, cuda_free: int | None = None) -> None:
    """Raise ValueError when the tiers cannot fit; the message gives every number."""
    avail = available if available is not None else available_host_bytes()
    host_total = host_bytes_per_rank * ranks + (device_bytes_per_rank * ranks if device_is_cpu else 0)
    if avail is not None and host_total > avail:
        parts = [f"L2 {_gib(host_bytes_per_rank)} x {ranks} rank(s)"]
        if device_is_cpu:
            parts.append(f"L1 (on the CPU) {_gib(device_bytes_per_rank)} x {ranks} rank(s)")
        raise ValueError(
            f"the tiers need {_gib(host_total)} of host memory ({' + '.join(parts)}) but only {_gib(avail)} is "
            "available; lower --device-capacity-tokens, --host-capacity-tokens, --hicache-ratio or --hicache-size "
            "(or --dp-size)"
        )
    if not device_is_cpu and cuda_free is not None and device_bytes_per_rank * ranks > cuda_free:
        raise ValueError(
            f"L1 needs {_gib(device_bytes_per_rank * ranks)} of GPU memory ({_gib(device_bytes_per_rank)} x {ranks} "
            f"rank(s)) but {_gib(cuda_free)} is free; lower --device-capacity-tokens"
        )
