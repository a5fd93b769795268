"""The ``vllm.general_plugins`` entry point: register ``HiCacheConnector`` with vLLM.

vLLM calls ``register()`` in every process it starts (front end, engine core, workers), so it
must be cheap and idempotent: it names the module and class; vLLM imports them lazily when a
``--kv-transfer-config`` asks for ``"kv_connector": "HiCacheConnector"``.
"""

from __future__ import annotations

import logging

CONNECTOR_NAME = "HiCacheConnector"

log = logging.getLogger(__name__)


def register() -> None:
    """Register the connector name with vLLM's ``KVConnectorFactory`` (once per process)."""
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except ImportError as exc:  # a vLLM without KV connectors: nothing to register
        log.warning("hicache-vllm: this vLLM has no KVConnectorFactory (%s); connector not registered", exc)
        return
    if CONNECTOR_NAME in KVConnectorFactory._registry:
        return
    KVConnectorFactory.register_connector(CONNECTOR_NAME, "hicache_vllm.connector", CONNECTOR_NAME)
