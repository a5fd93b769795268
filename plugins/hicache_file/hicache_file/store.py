"""``FileStore``: the ``file`` backend. Extra-config ``scheme`` picks how pages lie on disk.

===============  ===========================================================================
``pagefile``     the default: one checksummed file per page under the pool namespace,
                 ``<path>/<hc1 namespace>/<shard>/<key>.hcp`` (``hicache_file.pagefile``)
``sglang``       SGLang 0.5.23 ``HiCacheFile``'s files: ``<path>/<key><suffix>.bin``, raw bytes,
                 guarded by a format manifest, so one folder serves both engines
                 (``hicache_file.sglang_scheme``)
``segment``      pages packed in segment files (``hicache_file.segment``, when installed)
===============  ===========================================================================

``FileStore(config)`` returns an instance of the scheme's class (every one is a ``FileStore``
for ``isinstance``); the class itself holds no state. Shared parts: ``base`` (the public API
on top of each scheme's four hooks), ``poolpages`` (page bytes, by the core's rule),
``fileio`` (system calls), ``lru`` (size bound), ``config`` (settings).
"""

from __future__ import annotations

from typing import Any, ClassVar

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError
from hicache_core.spec.storage import HiCacheStorage
from hicache_file.config import scheme_of
from hicache_file.config_model import FileBackendConfig
from hicache_file.plugin import CAPABILITIES


def scheme_class(scheme: str) -> type[HiCacheStorage]:
    """The class that implements ``scheme``; a clear error when it cannot be loaded here."""
    if scheme == "pagefile":
        from hicache_file.pagefile import PageFileStore

        return PageFileStore
    if scheme == "sglang":
        from hicache_file.sglang_scheme import SGLangFileStore

        return SGLangFileStore
    if scheme == "segment":
        try:
            from hicache_file.segment.store import SegmentStore
        except ImportError as exc:
            raise BackendConfigError(
                f"file backend: scheme 'segment' needs the module hicache_file.segment, which cannot "
                f"be imported here ({exc}); use scheme 'pagefile' (the default) or 'sglang', or "
                "install a hicache-file release that ships the segment scheme"
            ) from exc
        if not issubclass(SegmentStore, FileStore):
            FileStore.register(SegmentStore)
        return SegmentStore
    raise BackendConfigError(f"file backend: unknown scheme {scheme!r}; use pagefile, sglang or segment")


class FileStore(HiCacheStorage):
    """The ``file`` backend: ``FileStore(config)`` opens the scheme named in ``extra_config``.

    Extra-config keys (all schemes): ``path`` (or SGLang's ``file_storage_path``; env
    ``HICACHE_FILE_PATH`` or ``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR``; default
    ``/tmp/hicache``), ``scheme``, ``max_bytes``, ``max_pages`` (LRU bound per namespace),
    ``fsync``, ``io_threads``; ``pagefile``: ``checksum`` (``xxh3`` or ``crc32``),
    ``remove_corrupt``; ``sglang``: ``sglang_layout``, ``sglang_dtype``.
    """

    contract_version = "1.0"
    capabilities = CAPABILITIES
    #: The extra-config schema the controller checks an attach against.
    config_model: ClassVar[type] = FileBackendConfig

    def __new__(cls, config: Any | None = None, *args: Any, **kwargs: Any) -> Any:
        if cls is not FileStore:
            return super().__new__(cls)
        impl = scheme_class(scheme_of(HiCacheStorageConfig.from_any(config).extra()))
        if issubclass(impl, FileStore) and FileStore in impl.__mro__:
            return super().__new__(impl)  # Python then runs impl.__init__(config, ...)
        # A scheme class outside this hierarchy: built here (Python does not initialise it again).
        return impl(config, *args, **kwargs)
