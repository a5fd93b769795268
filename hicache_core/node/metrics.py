"""Prometheus series of the node, read from its status at scrape time (no double counting)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hicache_core.node.node import Node

_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("requests", "hicache_node_requests", "Requests served"),
    ("input_tokens", "hicache_node_input_tokens", "Input tokens of the requests served"),
    ("computed_tokens", "hicache_node_computed_tokens", "Input tokens no tier held (recomputed)"),
    ("verify_errors", "hicache_node_verify_errors", "Pages loaded from L2/L3 with wrong bytes (must stay 0)"),
    ("verified_pages", "hicache_node_verified_pages", "Pages loaded from L2/L3 and verified"),
    ("bytes_loaded_host_to_device", "hicache_node_host_to_device_bytes", "Bytes loaded L2 -> L1"),
    ("bytes_loaded_storage_to_host", "hicache_node_storage_to_host_bytes", "Bytes loaded L3 -> L2"),
    ("bytes_stored", "hicache_node_stored_bytes", "Bytes backed up L2 -> L3 (confirmed)"),
    ("evicted_device_pages", "hicache_node_device_evicted_pages", "Pages evicted from L1"),
    ("evicted_host_pages", "hicache_node_host_evicted_pages", "Pages evicted from L2"),
)


class NodeCollector(Collector):
    """Exports per-rank counters, cached tokens per tier and tier occupancy."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        ranks = [r.status(include_storage=False) for r in self.node.ranks]
        for key, name, doc in _COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["rank"])
            for st in ranks:
                fam.add_metric([str(st["rank"])], float(st["counters"][key]))
            yield fam
        cached = CounterMetricFamily(
            "hicache_node_cached_tokens", "Input tokens served from a cache tier", labels=["rank", "tier"]
        )
        for st in ranks:
            for tier, value in st["counters"]["cached_tokens"].items():
                cached.add_metric([str(st["rank"]), tier], float(value))
        yield cached
        pages = GaugeMetricFamily("hicache_node_tier_pages", "Pages cached per tier", labels=["rank", "tier"])
        cap = GaugeMetricFamily("hicache_node_tier_capacity_pages", "Page capacity per tier", labels=["rank", "tier"])
        for st in ranks:
            for tier, info in st["tiers"].items():
                pages.add_metric([str(st["rank"]), tier], float(info["pages"]))
                cap.add_metric([str(st["rank"]), tier], float(info["capacity_pages"]))
        yield pages
        yield cap
