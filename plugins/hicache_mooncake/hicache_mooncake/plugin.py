"""Discovery entry point of the ``mooncake`` backend. Light: it never imports Mooncake."""

from __future__ import annotations

from hicache_core.plugins import BackendSpec, ConfigOption, hookimpl
from hicache_core.spec.capabilities import Capabilities
from hicache_mooncake.probe import APT_HINT, probe

CAPABILITIES = Capabilities(
    zero_copy_v1=True,
    delete=True,
    clear=True,
    # Pages live in cluster memory: a master restart loses them all.
    persistent=False,
    shared=True,
    # Any layout with a page format: pieces that are not contiguous go as multi-buffer objects.
    requires_page_layout=False,
    mla=True,
)

# Defaults are None on purpose: the factory copies declared defaults into extra_config, which
# would then override MOONCAKE_CONFIG_PATH and the MOONCAKE_* variables. The real defaults
# live in hicache_mooncake.config (SGLang's) and are named in each help text.
CONFIG_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "config_path", None,
        "a JSON file with the same keys (SGLang's Mooncake config file)", env="MOONCAKE_CONFIG_PATH",
    ),
    ConfigOption(
        "master_server_address", None,
        "host:port of mooncake_master's RPC service (required, here or in the config file/env)",
        env="MOONCAKE_MASTER",
    ),
    ConfigOption(
        "metadata_server", None,
        "transfer-engine metadata: http://host:port/metadata, etcd://... or P2PHANDSHAKE (default)",
        env="MOONCAKE_TE_META_DATA_SERVER",
    ),
    ConfigOption(
        "local_hostname", None,
        "address other nodes reach this one at (default localhost; a LAN IP in a cluster)",
        env="MOONCAKE_LOCAL_HOSTNAME",
    ),
    ConfigOption("protocol", None, "tcp (default) or rdma", env="MOONCAKE_PROTOCOL"),
    ConfigOption("device_name", None, "RDMA device(s), e.g. mlx5_0 (rdma only)", env="MOONCAKE_DEVICE"),
    ConfigOption(
        "global_segment_size", None,
        "memory this node contributes to the pool: int bytes or '4gb' (default 4gb; 0 = none)",
        env="MOONCAKE_GLOBAL_SEGMENT_SIZE",
    ),
    ConfigOption(
        "local_buffer_size", None, "client-side transfer buffer: int bytes or '16mb' (default 16mb)",
        env="MOONCAKE_LOCAL_BUFFER_SIZE",
    ),
    ConfigOption(
        "scheme", None,
        "object names: hicache (default; model, dtype, layout and shard in every name) or sglang "
        "(SGLang 0.5.23's MooncakeStore names and bytes, guarded by a per-namespace format record)",
    ),
    ConfigOption(
        "extra_backend_tag", None,
        "scheme sglang: the tag SGLang puts before the model name in its key prefix (SGLang's key)",
    ),
)


@hookimpl
def hicache_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="mooncake",
            target="hicache_mooncake.store:MooncakeStore",
            description="Mooncake Store: a cluster-wide memory pool shared by every node (TCP or RDMA)",
            install_hint=f"pip install hicache-mooncake; {APT_HINT}",
            capabilities=CAPABILITIES,
            config_options=CONFIG_OPTIONS,
            requires=("mooncake",),
            probe=probe,
        )
    ]
