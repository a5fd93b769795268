"""Entry point of the hf3fs backend. Light: imports neither torch nor 3FS's client."""

from __future__ import annotations

import importlib.util

from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
from hicache_core.spec.capabilities import Capabilities

CAPABILITIES = Capabilities(
    zero_copy_v1=True, delete=True, clear=True, persistent=True, shared=True,
    requires_page_layout=False, mla=True, sidecar_pools=False,
)

# Defaults are None here on purpose: the factory copies non-None defaults into extra-config,
# which would override the JSON config file. The real defaults live in config.Hf3fsSettings.
CONFIG_OPTIONS = (
    ConfigOption("config_path", None, "JSON file with the keys below (SGLang's format)",
                 env="SGLANG_HICACHE_HF3FS_CONFIG_PATH"),
    ConfigOption("file_path_prefix", None, "rank files are <prefix>.<rank>.bin (MLA: <prefix>.mla.0.bin); default /data/hicache"),
    ConfigOption("file_size", None, "bytes each rank file is pre-sized to; default 1 TiB"),
    ConfigOption("numjobs", None, "parallel I/O jobs (usrbio ring pairs / file threads); default 16"),
    ConfigOption("entries", None, "usrbio ring entries per job (pages per submission); default 8"),
    ConfigOption("io_depth", None, "usrbio io_depth: 0 (default) all at once, >0 fixed batches, <0 at most -n"),
    ConfigOption("client_timeout", None, "seconds to wait for a usrbio batch or a metadata call; default 5"),
    ConfigOption("metadata_server_url", None, "shared page-index service; unset = in-process (one process)"),
    ConfigOption("client", None, "auto (default: usrbio on a 3FS mount), usrbio, or file (plain preadv/pwritev)"),
    ConfigOption("allow_non_3fs", None, "true lets auto use plain files off 3FS (reported as not-3FS); default false"),
    ConfigOption("write_lease_seconds", None, "a page being written longer than this is reclaimed; default 120"),
    ConfigOption("index_path", None, "where in-process metadata saves its index (default <file>.index.json)"),
)


def _description() -> str:
    base = "DeepSeek 3FS: pre-sized rank files, usrbio rings, page-index service"
    try:
        has_usrbio = importlib.util.find_spec("hf3fs_fuse") is not None
    except (ImportError, ValueError):
        has_usrbio = False
    if has_usrbio:
        return base
    return base + " (usrbio client not installed here: plain-file mode only, with client: file)"


@hookimpl
def hicache_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="hf3fs",
            target="hicache_hf3fs.store:Hf3fsStore",
            description=_description(),
            install_hint="pip install hicache-hf3fs (usrbio: build hf3fs_py_usrbio from the 3FS sources)",
            capabilities=CAPABILITIES,
            config_options=CONFIG_OPTIONS,
            requires=("httpx", "fastapi"),
            docs_url="https://github.com/deepseek-ai/3FS/blob/main/src/lib/api/UsrbIo.md",
        )
    ]
