"""What a new user tripped on (issue 16, item 8), and trace-loader errors that name the file."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from hicache_core.replay.report import phase_table, rolling_series, summary_table, write_plot
from hicache_core.replay.runner import TIERS, ReplayResult, RequestRecord, backups_in_flight, settled_status
from hicache_core.replay.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- trace errors
def test_a_gzip_trace_is_read(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"hash_ids": [1, 2], "input_length": 1000}\n'))
    assert load_trace(p)[0].hash_ids == (1, 2)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary \x80\x81\n", gzip.compress(b"x" * 100)[:12]])
def test_binary_or_broken_traces_name_the_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "weird.trace"
    p.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_trace(p)
    assert str(p) in str(info.value)


# ---------------------------------------------------------------------------- 80 columns
def _summary(phases: list[str]) -> dict[str, object]:
    phase = {"requests": 1000, "failed_requests": 0, "input_tokens": 1000, "verify_errors": 0,
             "hit_tokens": {"device": 1, "host": 2, "storage": 3}, "token_hit_ratio": 0.5}
    return {"phases": [{**phase, "phase": p} for p in phases]}


def test_phase_table_fits_80_columns_unwrapped() -> None:
    buf = io.StringIO()
    Console(file=buf, width=80).print(phase_table(_summary(["attached file-a", "re-attached file-a",
                                                            "switched to file-b"])))
    text = buf.getvalue()
    assert "storage" in text and "verify err" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_summary_table_fits_80_columns() -> None:
    summary = {"requests": 1000, "failed_requests": 0, "input_tokens": 13_732_944, "verify_errors": 0,
               "hit_tokens": dict.fromkeys(TIERS, 1_000_000), "tier_hit_ratio": dict.fromkeys(TIERS, 0.1),
               "token_hit_ratio": 0.3, "bytes_loaded": 1 << 30, "bytes_stored": 1 << 30, "wall_seconds": 20.0,
               "requests_per_second": 50.0, "mean_latency_ms": 10.0, "trace_reference": {"token_hit_ratio": 0.2}}
    buf = io.StringIO()
    Console(file=buf, width=80).print(summary_table(summary))
    assert "…" not in buf.getvalue()


# ---------------------------------------------------------------------------- plots
def _rec(i: int, phase: str, storage: int) -> RequestRecord:
    return RequestRecord(i, float(i * 100), phase, 100, cached={"device": 0, "host": 0, "storage": storage})


def test_the_plot_window_restarts_at_each_phase() -> None:
    """The 50-request window showed L3 hits after the detach line (hits from before it)."""
    recs = [_rec(i, "attached", 100) for i in range(60)] + [_rec(60 + i, "detached", 0) for i in range(20)]
    _, series = rolling_series(recs, 50)
    assert series["storage"][59] == 1.0
    assert all(v == 0.0 for v in series["storage"][60:])


def test_a_one_request_replay_plots_a_bar(tmp_path: Path) -> None:
    result = ReplayResult([_rec(0, "replay", 60)], 0.1, None, None, {"token_hit_ratio": 0.5})
    out = write_plot(result, tmp_path / "one.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    # Something besides white and the axes was drawn: the bar's colour (an empty axis was all white).
    assert ((img[..., :3].max(axis=2) - img[..., :3].min(axis=2)) > 0.2).sum() > 1000


# ---------------------------------------------------------------------------- bytes stored
class _Target:
    def __init__(self) -> None:
        self.calls = 0

    def status(self) -> dict[str, object]:
        self.calls += 1
        in_flight = max(0, 3 - self.calls)
        return {"ranks": [{"backup_pages_in_flight": in_flight}], "totals": {"bytes_stored": 100 * self.calls}}

    def send(self, req: object) -> dict[str, object]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_bytes_stored_waits_for_backups_in_flight() -> None:
    """replay's "bytes stored" ended below the node's own counter: backups still in flight."""
    t = _Target()
    status = settled_status(t, poll_s=0.0)  # type: ignore[arg-type]
    assert backups_in_flight(status) == 0 and t.calls == 3


# ---------------------------------------------------------------------------- docs
def test_docs_agree_on_the_demo_time_and_have_no_leftover_heading() -> None:
    node_md = (ROOT / "docs" / "node.md").read_text()
    assert "suggested README text" not in node_md
    assert "About 30 s on 2 cores" in node_md


def test_status_shows_per_rank_load() -> None:
    from hicache_core.node import Node, NodeConfig
    from hicache_core.node.tokens import request_from_block_ids

    node = Node(NodeConfig(page_size=64, device_capacity_tokens=4096, dp_size=2))
    try:
        for i in range(6):
            node.process(request_from_block_ids([1, 100 + i], 1024, 64))
        routing = node.status()["routing"]
        json.dumps(routing)
        assert [r["rank"] for r in routing["ranks"]] == [0, 1]
        assert all({"in_flight", "routed", "by_prefix", "by_load"} <= set(r) for r in routing["ranks"])
        assert sum(r["routed"] for r in routing["ranks"]) == 6
    finally:
        node.close()
