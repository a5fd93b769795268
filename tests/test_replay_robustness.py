"""Replay on traces unlike the conversation trace: odd lines, odd ids, odd page sizes.

The unbounded in-process node must give the trace's own prefix-reuse figure exactly (the
rule of ``shared/traces/README.md``), and bounded tiers never more. Random traces come from a
seeded generator (no extra test dependency); the hand-written ``data/traces/edge_cases.jsonl``
is described line by line in ``data/traces/README.md``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _node_helpers import dir_store

from hicache_core.node import Node, NodeConfig
from hicache_core.node.server import NodeProcess
from hicache_core.replay import HttpTarget, LocalTarget, load_trace, prefix_reuse, replay
from hicache_core.replay.trace import TraceRequest

BLOCK = 512
EDGE_CASES = Path(__file__).resolve().parent / "data" / "traces" / "edge_cases.jsonl"
# Ids the first node version mapped onto each other's tokens (id * 512 wrapped at 2**32).
WRAPPING_IDS = (7, 7 + 2**23, 7 + 2**24, 2**64 + 7, 2**40)


def obvious_figure(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(hit tokens, input tokens) by the README's rule, from the raw JSON rows, the slow way."""
    seen: set[tuple[int, ...]] = set()
    hits = tokens = 0
    for row in rows:
        ids = [int(b) for b in row["hash_ids"]]
        length = int(row.get("input_length", len(ids) * BLOCK))
        k = 0
        while k < len(ids) and tuple(ids[: k + 1]) in seen:
            k += 1
        hits += min(k * BLOCK, length)
        tokens += length
        seen.update(tuple(ids[: j + 1]) for j in range(len(ids)))
    return hits, tokens


def random_rows(seed: int, n: int = 90) -> list[dict[str, Any]]:
    """Requests that share prefixes, reuse a few ids everywhere and vary every optional field."""
    rng = random.Random(seed)
    universe = list(range(12)) + list(WRAPPING_IDS)  # few ids: the same id recurs at other positions
    rows: list[dict[str, Any]] = []
    ts = 0.0
    for _ in range(n):
        roll = rng.random()
        if rows and roll < 0.1:
            ids = list(rng.choice(rows)["hash_ids"])  # a repeated request
        elif rows and roll < 0.7:
            base = rng.choice(rows)["hash_ids"]
            ids = base[: rng.randint(0, len(base))] + [rng.choice(universe) for _ in range(rng.randint(0, 5))]
        elif roll < 0.75:
            ids = [rng.choice(universe) for _ in range(rng.randint(60, 120))]  # a very long request
        else:
            ids = [rng.choice(universe) for _ in range(rng.randint(0, 6))]
        full = len(ids) * BLOCK
        length = rng.choice([
            full,
            max(0, full - rng.randrange(BLOCK)),  # a partial last block
            rng.randint(0, full),  # anything up to the blocks, often far below them
            0,
            full + rng.randint(1, 2000),  # past the blocks: the excess never hits
            None,  # missing: every block full
        ])
        ts += rng.choice([0.0, 0.0, 1.0, 2.5, -3.0, 1000.0])  # duplicates, decreasing, float
        row: dict[str, Any] = {"hash_ids": ids}
        if length is not None:
            row["input_length"] = length
        if rng.random() < 0.8:
            row["timestamp"] = ts if rng.random() < 0.5 else int(ts)
        if rng.random() < 0.7:
            row["output_length"] = rng.randint(0, 300)
        if rng.random() < 0.3:
            row["session_id"] = f"s{rng.randint(0, 9)}"  # unknown fields are ignored
        rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path, seed: int) -> Path:
    """JSONL with blank and whitespace lines and CRLF endings sprinkled in."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        for row in rows:
            if rng.random() < 0.1:
                fh.write(rng.choice(["\n", "  \n", "\t\r\n"]))
            fh.write(json.dumps(row) + rng.choice(["\n", "\n", "\r\n"]))
    return path


def unbounded(requests: list[TraceRequest], page_size: int, dp_size: int = 1) -> Node:
    blocks = prefix_reuse(requests).distinct_blocks
    return Node(NodeConfig(page_size=page_size, device_capacity_tokens=(blocks + 1) * BLOCK, dp_size=dp_size))


def replayed(node: Node, requests: list[TraceRequest]) -> dict[str, Any]:
    try:
        s = replay(LocalTarget(node, owns=False), requests, progress=False).summary()
    finally:
        node.close()
    assert s["failed_requests"] == 0, s["errors"]
    assert s["verify_errors"] == 0
    return s


SEEDS = (1, 2, 3)


@pytest.fixture(scope="module", params=SEEDS)
def random_trace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[
        list[dict[str, Any]], list[TraceRequest]]:
    seed = int(request.param)
    rows = random_rows(seed)
    path = write_rows(rows, tmp_path_factory.mktemp(f"trace{seed}") / "t.jsonl", seed)
    return rows, load_trace(path)


# ---------------------------------------------------------------------------- the loader
def test_loader_keeps_every_request_as_written(random_trace: tuple[list[dict[str, Any]], list[TraceRequest]]) -> None:
    rows, reqs = random_trace
    assert len(reqs) == len(rows)
    for i, (row, req) in enumerate(zip(rows, reqs)):
        assert req.index == i
        assert req.hash_ids == tuple(row["hash_ids"])
        assert req.input_length == row.get("input_length", len(row["hash_ids"]) * BLOCK)
        assert req.output_length == row.get("output_length", 0)
        assert req.timestamp_ms == float(row.get("timestamp", 0))


def test_reference_equals_the_obvious_rule(random_trace: tuple[list[dict[str, Any]], list[TraceRequest]]) -> None:
    rows, reqs = random_trace
    fig = prefix_reuse(reqs)
    assert (fig.hit_tokens, fig.input_tokens) == obvious_figure(rows)
    assert 0 < fig.hit_tokens < fig.input_tokens  # the generator does make reuse, and misses
    stamps = [r.timestamp_ms for r in reqs]
    assert fig.span_seconds == (max(stamps) - min(stamps)) / 1000.0  # not first-to-last: lines are unsorted


def test_edge_case_file_gives_the_hand_computed_figures() -> None:
    """The totals worked out by hand in data/traces/README.md."""
    reqs = load_trace(EDGE_CASES)
    fig = prefix_reuse(reqs)
    assert (fig.requests, fig.blocks, fig.hit_blocks) == (14, 32, 19)
    assert (fig.input_tokens, fig.hit_tokens) == (13564, 7456)
    assert reqs[12].input_length == 2560 and reqs[13].hash_ids[-1] == 5  # defaulted; 5.0 read as 5


# ---------------------------------------------------------------------------- the node
@pytest.mark.parametrize("page_size", [512, 256, 128, 64])
def test_unbounded_node_gives_the_exact_figure(
    random_trace: tuple[list[dict[str, Any]], list[TraceRequest]], page_size: int,
) -> None:
    _, reqs = random_trace
    fig = prefix_reuse(reqs)
    s = replayed(unbounded(reqs, page_size), reqs)
    assert s["input_tokens"] == fig.input_tokens
    assert sum(s["hit_tokens"].values()) == fig.hit_tokens
    assert s["token_hit_ratio"] == fig.token_hit_ratio


@pytest.mark.parametrize("page_size", [1, 16, 512])
def test_edge_cases_exact_at_any_page_size_that_divides_the_block(page_size: int) -> None:
    reqs = load_trace(EDGE_CASES)
    s = replayed(unbounded(reqs, page_size), reqs)
    assert sum(s["hit_tokens"].values()) == prefix_reuse(reqs).hit_tokens


def test_data_parallel_ranks_never_beat_the_figure(
    random_trace: tuple[list[dict[str, Any]], list[TraceRequest]],
) -> None:
    """Cache-aware routing sends a request whose known prefix is short to the least loaded rank
    (SGLang's router does the same): that rank may miss the short prefix, so DP ranks without a
    shared L3 stay at or under the trace's figure, never above it (a hit above it would be a
    page served from another request's bytes), and close to it."""
    _, reqs = random_trace
    node = unbounded(reqs, 64, dp_size=3)
    s = replay(LocalTarget(node, owns=False), reqs, progress=False).summary()
    routed = [r["routed"] for r in node.status()["routing"]["ranks"]]
    node.close()
    fig = prefix_reuse(reqs).hit_tokens
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0
    assert 0.85 * fig <= sum(s["hit_tokens"].values()) <= fig
    assert sum(1 for n in routed if n) >= 2, routed


def test_the_same_id_elsewhere_is_no_reuse() -> None:
    """Equal ids count only at equal positions after an equal prefix; wrapped ids are distinct."""
    shapes = [(1, 2), (2, 1), (3, 2), (2, 2, 1), (1, 1, 2), (1, 3)]
    reqs = [TraceRequest(i, float(i), len(ids) * BLOCK, 1, ids) for i, ids in enumerate(shapes)]
    reqs += [TraceRequest(len(reqs) + i, 0.0, BLOCK, 1, (b,)) for i, b in enumerate(WRAPPING_IDS)]
    fig = prefix_reuse(reqs)
    # Worked by hand: (2, 2, 1) reuses (2,) of (2, 1); (1, 1, 2) and (1, 3) reuse (1,) of (1, 2).
    assert fig.hit_tokens == 3 * BLOCK
    for page_size in (512, 64):
        s = replayed(unbounded(reqs, page_size), reqs)
        assert sum(s["hit_tokens"].values()) == fig.hit_tokens


@pytest.mark.parametrize(("device_tokens", "l2_ratio"), [(512, 1.0), (4096, 2.0), (20 * 512, 0.5)])
def test_bounded_tiers_never_beat_the_figure(
    random_trace: tuple[list[dict[str, Any]], list[TraceRequest]], device_tokens: int, l2_ratio: float,
) -> None:
    _, reqs = random_trace
    s = replayed(Node(NodeConfig(page_size=64, device_capacity_tokens=device_tokens, hicache_ratio=l2_ratio)), reqs)
    assert sum(s["hit_tokens"].values()) <= prefix_reuse(reqs).hit_tokens


def test_small_tiers_with_l3_stay_under_the_figure(tmp_path: Path) -> None:
    """L1 + L2 + L3 serve pages from storage, verified, and never more than the figure.

    Not exactly the figure: L2 evicts least recently used pages first, which can drop a
    block's page while the next block's pages, still being written to L3, stay in L2; the
    match then stops at the gap (reported to the node's owner).
    """
    reqs = load_trace(write_rows(random_rows(7), tmp_path / "t.jsonl", 7))
    largest = max(len(r.hash_ids) for r in reqs) * BLOCK
    node = Node(NodeConfig(page_size=128, device_capacity_tokens=largest, hicache_ratio=2.0,
                           storage_backend="dynamic", storage_extra_config=dir_store(tmp_path / "l3")))
    s = replayed(node, reqs)
    assert s["hit_tokens"]["storage"] > 0 and s["node_verify_errors"] == 0
    assert sum(s["hit_tokens"].values()) <= prefix_reuse(reqs).hit_tokens


def test_a_page_size_that_does_not_divide_the_block_says_so() -> None:
    """96 tokens do not tile a 512-token block: every request fails with the fix in its message."""
    reqs = load_trace(EDGE_CASES)
    node = Node(NodeConfig(page_size=96, device_capacity_tokens=96 * 64))
    try:
        s = replay(LocalTarget(node, owns=False), reqs, progress=False).summary()
    finally:
        node.close()
    assert s["failed_requests"] == len(reqs)
    assert any("does not divide" in e and "--page-size" in e for e in s["errors"])


def test_a_node_over_http_gives_the_same_figure(tmp_path: Path) -> None:
    """Odd ids (above 2**64) and input lengths survive the JSON request body of ``POST /generate``."""
    reqs = load_trace(EDGE_CASES) + load_trace(write_rows(random_rows(5), tmp_path / "t.jsonl", 5))
    reqs = [TraceRequest(i, r.timestamp_ms, r.input_length, r.output_length, r.hash_ids) for i, r in enumerate(reqs)]
    capacity = (prefix_reuse(reqs).distinct_blocks + 1) * BLOCK
    with NodeProcess(["--page-size", "64", "--device-capacity-tokens", str(capacity)],
                     log_path=tmp_path / "node.log") as node:
        target = HttpTarget(node.url)
        try:
            s = replay(target, reqs, concurrency=1, progress=False).summary()
        finally:
            target.close()
    assert s["failed_requests"] == 0, s["errors"]
    assert sum(s["hit_tokens"].values()) == prefix_reuse(reqs).hit_tokens


# ---------------------------------------------------------------------------- malformed lines
GOOD = '{"timestamp": 0, "input_length": 512, "hash_ids": [1]}'


@pytest.mark.parametrize(("line", "names"), [
    ("not json", "Expecting value"),
    ("[1, 2]", "list, not an object"),
    ('{"input_length": 5}', "hash_ids"),
    ('{"hash_ids": "123"}', "str, not a list"),
    ('{"hash_ids": [1, -2]}', "hash_ids"),
    ('{"hash_ids": [1, 2.5]}', "hash_ids"),
    ('{"hash_ids": [1, "7"]}', "hash_ids"),
    ('{"hash_ids": [true]}', "hash_ids"),
    ('{"hash_ids": [1], "input_length": -5}', "input_length"),
    ('{"hash_ids": [1], "input_length": "512"}', "input_length"),
    ('{"hash_ids": [1], "output_length": -1}', "output_length"),
    ('{"hash_ids": [1], "timestamp": "soon"}', "timestamp"),
    ('{"hash_ids": [1], "timestamp": NaN}', "timestamp"),
    ('{"hash_ids": [1], "timestamp": Infinity}', "timestamp"),
    ('{"hash_ids": [1], "timestamp": 1' + "0" * 400 + "}", "timestamp"),
])
def test_a_malformed_line_stops_the_load_naming_line_and_field(tmp_path: Path, line: str, names: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3:") as info:
        load_trace(path)
    assert names in str(info.value)


def test_byte_order_mark_and_timestamp_units(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\n".encode() + b'{"timestamp": 2.5, "hash_ids": [1, 2]}\n')
    assert [r.timestamp_ms for r in load_trace(path)] == [0.0, 2.5]
    assert [r.timestamp_ms for r in load_trace(path, timestamp_unit="s")] == [0.0, 2500.0]
    assert [r.timestamp_ms for r in load_trace(path, timestamp_unit="us")] == [0.0, 0.0025]
    with pytest.raises(ValueError, match="timestamp unit 'h'"):
        load_trace(path, timestamp_unit="h")


# ---------------------------------------------------------------------------- pacing
def test_paced_replay_keeps_file_order_when_timestamps_go_back() -> None:
    stamps = [300.0, 0.0, 300.0, 100.0, 400.0]
    reqs = [TraceRequest(i, t, BLOCK, 1, (i % 2,)) for i, t in enumerate(stamps)]
    node = Node(NodeConfig(page_size=64, device_capacity_tokens=4096))
    result = replay(LocalTarget(node), reqs, speed=1.0, progress=False)
    assert [r.index for r in result.records] == list(range(len(reqs)))
    assert all(r.ok for r in result.records)
    assert result.wall_seconds >= 0.1 * 0.9  # the last request is 100 ms after the first


def test_max_gap_cuts_idle_time_and_keeps_the_spacing_after_it() -> None:
    """Three hours of idle trace time at speed 1 take max_gap; the 0.2 s after the gap is kept."""
    hours = 3 * 3600 * 1000.0
    reqs = [TraceRequest(0, 0.0, BLOCK, 1, (1,)), TraceRequest(1, hours, BLOCK, 1, (1,)),
            TraceRequest(2, hours + 200.0, BLOCK, 1, (1,))]
    node = Node(NodeConfig(page_size=64, device_capacity_tokens=4096))
    result = replay(LocalTarget(node), reqs, speed=1.0, max_gap_s=0.5, progress=False)
    assert all(r.ok for r in result.records)
    assert 0.7 * 0.9 <= result.wall_seconds < 60  # 0.5 s (the cut gap) + 0.2 s, not three hours
    with pytest.raises(ValueError, match="--max-gap"):
        replay(LocalTarget(Node(NodeConfig(page_size=64))), reqs, speed=1.0, max_gap_s=-1.0, progress=False)


# ---------------------------------------------------------------------------- the CLI
def hicache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hicache_core.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_replays_the_edge_cases_exactly() -> None:
    out = hicache("replay", str(EDGE_CASES), "--unbounded", "--json", "--page-size", "128",
                  "--speed", "1000", "--timestamp-unit", "s", "--max-gap", "0.05")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    fig = prefix_reuse(load_trace(EDGE_CASES))
    assert summary["failed_requests"] == 0
    assert sum(summary["hit_tokens"].values()) == fig.hit_tokens
    assert summary["token_hit_ratio"] == fig.token_hit_ratio


def test_cli_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f"{GOOD}\n{{\"hash_ids\": [1], \"input_length\": -1}}\n")
    out = hicache("replay", str(bad))
    assert out.returncode == 2 and "bad.jsonl:2" in out.stderr and "input_length" in out.stderr
    out = hicache("replay", str(bad), "--speed", "1", "--max-gap", "-1")
    assert out.returncode == 2 and "--max-gap" in out.stderr
    out = hicache("replay", str(EDGE_CASES), "--page-size", "96")
    assert out.returncode == 2 and "--page-size 96 does not divide" in out.stderr


def test_cli_warns_before_a_paced_replay_of_hours(tmp_path: Path) -> None:
    """Timestamps in seconds read as ms would be quick; read as seconds they span 2 hours: warned."""
    slow = tmp_path / "slow.jsonl"
    slow.write_text(f"{GOOD}\n" + '{"timestamp": 7200, "hash_ids": [1]}\n')
    proc = subprocess.Popen([sys.executable, "-m", "hicache_core.cli.main", "replay", str(slow), "--speed", "1",
                             "--timestamp-unit", "s", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()  # printed before the first request; the replay then waits
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert "2.0 h" in warning and "--timestamp-unit" in warning and "--max-gap" in warning
