"""The reference node: the cache side of an LLM engine (L1 device, L2 host, L3 through the
storage controller), served over HTTP by ``hicache serve``.

``Node(NodeConfig(...)).process(request_from_block_ids(...))`` is the in-process API that
``hicache replay`` and the tests use; ``hicache_core.node.app.create_app(node, admin_api_key)``
is the FastAPI app with SGLang's admin API.
"""

from hicache_core.node.node import DEFAULT_NODE_PREFETCH_POLICY, Node, NodeConfig
from hicache_core.node.presets import PRESETS, ModelShape, resolve_shape
from hicache_core.node.rank import TIERS, CacheRank, RequestResult
from hicache_core.node.tokens import (
    MOONCAKE_BLOCK_TOKENS,
    CacheRequest,
    request_from_block_ids,
    request_from_token_ids,
)

__all__ = [
    "DEFAULT_NODE_PREFETCH_POLICY",
    "MOONCAKE_BLOCK_TOKENS",
    "PRESETS",
    "TIERS",
    "CacheRank",
    "CacheRequest",
    "ModelShape",
    "Node",
    "NodeConfig",
    "RequestResult",
    "request_from_block_ids",
    "request_from_token_ids",
    "resolve_shape",
]
