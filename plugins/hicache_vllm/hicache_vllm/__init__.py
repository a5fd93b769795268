"""hicache backends as vLLM's L3 tier: ``HiCacheConnector``, a vLLM v1 KV connector.

``pip install hicache-vllm hicache-<backend>`` and start vLLM with
``--kv-transfer-config '{"kv_connector": "HiCacheConnector", "kv_role": "kv_both",
"kv_connector_extra_config": {"backend": "file", "backend_config": {"path": "/tmp/l3"}}}'``.
The modules that do not import vLLM (``settings``, ``layout``, ``store``, ``keys``) are usable
and testable without it.
"""

from hicache_vllm.plugin import CONNECTOR_NAME

__all__ = ["CONNECTOR_NAME"]
__version__ = "0.1.0"
