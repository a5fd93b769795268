"""Which I/O client a rank file gets, and the name the metadata service indexes it under."""

from __future__ import annotations

import importlib.util
import os

from hicache_core.spec.errors import BackendConfigError
from hicache_hf3fs.config import Hf3fsSettings
from hicache_hf3fs.mounts import Mount, mount_of


def usrbio_importable() -> bool:
    """Whether 3FS's Python client can be found (without importing it)."""
    try:
        return importlib.util.find_spec("hf3fs_fuse") is not None
    except (ImportError, ValueError):
        return False


def choose_client(settings: Hf3fsSettings, path: str, mount: Mount | None, usrbio: bool) -> str:
    """``usrbio`` or ``file`` for ``path``; BackendConfigError when the config does not allow either."""
    where = mount_of(path)
    fs = f"{where.fstype} at {where.mount_point}" if where is not None else "an unknown file system"
    if settings.client == "usrbio":
        if mount is None:
            raise BackendConfigError(
                f"hf3fs: client is 'usrbio' but {path} is not on a 3FS mount (it is on {fs}); "
                "point file_path_prefix at a 3FS mount, or set client: \"file\""
            )
        if not usrbio:
            raise BackendConfigError(
                "hf3fs: client is 'usrbio' but hf3fs_fuse is not importable; build and install 3FS's "
                "Python client (hf3fs_py_usrbio) or set client: \"file\""
            )
        return "usrbio"
    if settings.client == "file":
        return "file"
    if mount is not None and usrbio:
        return "usrbio"
    if settings.allow_non_3fs:
        return "file"
    if mount is not None:
        raise BackendConfigError(
            f"hf3fs: {path} is on the 3FS mount {mount.mount_point} but hf3fs_fuse (the usrbio client) is "
            "not importable; install 3FS's Python client, or set client: \"file\" to use plain reads "
            "through the FUSE mount"
        )
    raise BackendConfigError(
        f"hf3fs: {path} is not on a 3FS mount (it is on {fs}); point file_path_prefix at a 3FS mount, "
        "or opt in to plain files with client: \"file\" or allow_non_3fs: true (reported as not-3FS)"
    )


def metadata_namespace(path: str, mount: Mount | None) -> str:
    """The name under which the shared service indexes a rank file (not the key namespace).

    On 3FS: the path inside the mount (``3fs:/kv/hicache.0.bin``), the same on every node
    whatever its mount point. Elsewhere: the absolute real path, shared only on one machine.
    """
    real = os.path.realpath(os.path.abspath(path))
    if mount is not None:
        inside = os.path.relpath(real, os.path.realpath(mount.mount_point))
        return "3fs:/" + inside
    return real
