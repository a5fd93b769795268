"""Replaying Mooncake-format traces against a node, and the trace's own reuse figure."""

from hicache_core.replay.reference import ReuseFigures, prefix_reuse
from hicache_core.replay.runner import ReplayResult, RequestRecord, replay
from hicache_core.replay.targets import HttpTarget, LocalTarget, Target
from hicache_core.replay.trace import TraceRequest, load_trace, sample_trace_path

__all__ = [
    "HttpTarget",
    "LocalTarget",
    "ReplayResult",
    "RequestRecord",
    "ReuseFigures",
    "Target",
    "TraceRequest",
    "load_trace",
    "prefix_reuse",
    "replay",
    "sample_trace_path",
]
