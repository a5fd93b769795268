"""Plugin module of hicache-file: describes the ``file`` backend without importing it."""

from __future__ import annotations

from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
from hicache_core.spec.capabilities import Capabilities

CAPABILITIES = Capabilities(
    zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=False, mla=True, sidecar_pools=True
)

CONFIG_OPTIONS = (
    # No default value here: a declared default would be filled into extra-config and hide the
    # environment variables. The default directory is applied by the store.
    ConfigOption(
        "path", None,
        "directory of the page files (also: extra-config 'file_storage_path', env "
        "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR); default /tmp/hicache",
        env="HICACHE_FILE_PATH",
    ),
    ConfigOption(
        "scheme", None,
        "how pages lie on disk: 'pagefile' (default; checksummed files under the pool namespace), "
        "'sglang' (SGLang HiCacheFile's <key><suffix>.bin raw files, guarded by a format manifest), "
        "'segment' (pages packed in segment files)",
    ),
    ConfigOption(
        "sglang_layout", None,
        "scheme sglang: host-pool layout of the SGLang server that wrote an unmarked folder "
        "(layer_first, page_first, page_first_direct, page_head); with sglang_dtype",
    ),
    ConfigOption("sglang_dtype", None, "scheme sglang: KV dtype of that server (bfloat16, float16, ...)"),
    ConfigOption("max_bytes", None, "size bound per namespace in bytes ('64GiB' accepted); LRU eviction"),
    ConfigOption("max_pages", None, "page-count bound per namespace; LRU eviction"),
    ConfigOption("fsync", None, "fsync each page before it becomes visible (survives power loss; slower)"),
    ConfigOption("io_threads", None, "threads that serve one batch (default 2)"),
    ConfigOption("checksum", None, "page checksum: 'xxh3' (default) or 'crc32'"),
    ConfigOption("remove_corrupt", None, "delete a page file that fails its check (default true)"),
)


@hookimpl
def hicache_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="file",
            target="hicache_file.store:FileStore",
            description="local files, the embedded default",
            install_hint="pip install hicache-file",
            capabilities=CAPABILITIES,
            config_options=CONFIG_OPTIONS,
            requires=("xxhash",),
        )
    ]
