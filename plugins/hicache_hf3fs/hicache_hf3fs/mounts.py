"""Is a path on a 3FS mount? Answered from the kernel's mount table, without 3FS's library."""

from __future__ import annotations

import os
from dataclasses import dataclass

MOUNTS_FILE = "/proc/mounts"
#: File-system types a 3FS FUSE mount shows in the mount table.
HF3FS_FSTYPES = frozenset({"fuse.3fs", "fuse.hf3fs", "hf3fs", "3fs"})


@dataclass(frozen=True)
class Mount:
    device: str
    mount_point: str
    fstype: str

    @property
    def is_3fs(self) -> bool:
        return self.fstype in HF3FS_FSTYPES


def _unescape(field: str) -> str:
    # The mount table writes space, tab, newline and backslash as octal escapes (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    """The mounts listed in ``text`` (the format of ``/proc/mounts``)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return mounts


def mount_of(path: str, mounts_text: str | None = None) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point above it), or None."""
    if mounts_text is None:
        try:
            with open(MOUNTS_FILE) as fh:
                mounts_text = fh.read()
        except OSError:
            return None
    # realpath resolves the symlinks of the part that exists; the rank file may not exist yet.
    target = os.path.realpath(os.path.abspath(path))
    best: Mount | None = None
    for mount in parse_mounts(mounts_text):
        mp = mount.mount_point.rstrip("/") or "/"
        if target == mp or target.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/"):
                best = mount
    return best


def hf3fs_mount_of(path: str, mounts_text: str | None = None) -> Mount | None:
    """The 3FS mount holding ``path``, or None when ``path`` is on another file system."""
    mount = mount_of(path, mounts_text)
    return mount if mount is not None and mount.is_3fs else None
