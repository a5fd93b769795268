"""Traces whose blocks are not 512 tokens: Alibaba's Qwen (Bailian) traces share the Mooncake
format (plus ``chat_id``, ``parent_chat_id``, ``turn``, ``type``; timestamps in seconds) with
16-token blocks. The loader infers the block size from ``input_length``; the reference figure,
the in-process node and ``POST /generate`` all count a block as that many tokens."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hicache_core.node import Node, NodeConfig
from hicache_core.node.server import NodeProcess
from hicache_core.node.tokens import request_from_block_ids
from hicache_core.replay import LocalTarget, load_trace, prefix_reuse, replay, sample_trace_path
from hicache_core.replay.trace import TraceRequest, infer_block_tokens

FULL_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def qwen_style_trace(path: Path, chats: int = 40, block: int = 16, seed: int = 7) -> Path:
    """Multi-turn chats in the Qwen trace's format: each turn's blocks extend the previous turn's
    (its prompt holds the history), the last block of each prompt partial, seconds as floats."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    next_block, t = 0, 0.0
    system = list(range(next_block, next_block + 3))  # a system prompt every chat shares
    next_block += 3
    for _chat in range(chats):
        history = list(system)
        parent = -1
        for turn in range(1, rng.randint(2, 4) + 1):
            new = rng.randint(1, 12)
            history = history + list(range(next_block, next_block + new))
            next_block += new
            length = (len(history) - 1) * block + rng.randint(1, block)
            t += rng.uniform(0.01, 0.5)
            cid = len(rows)
            rows.append({"chat_id": cid, "parent_chat_id": parent, "timestamp": round(t, 3), "input_length": length,
                         "output_length": rng.randint(1, 300), "type": "text", "turn": turn,
                         "hash_ids": list(history)})
            parent = cid
            history = [*history, next_block]  # the answer becomes part of the next prompt
            next_block += 1
    rng.shuffle(rows)
    rows.sort(key=lambda r: float(r["timestamp"]))  # type: ignore[arg-type]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def brute_force_token_hits(requests: list[TraceRequest], block: int) -> int:
    seen: set[tuple[int, ...]] = set()
    hits = 0
    for r in requests:
        k = 0
        while k < len(r.hash_ids) and tuple(r.hash_ids[: k + 1]) in seen:
            k += 1
        hits += min(k * block, r.input_length)
        seen.update(tuple(r.hash_ids[: j + 1]) for j in range(len(r.hash_ids)))
    return hits


def test_the_block_size_is_inferred_from_input_length(tmp_path: Path) -> None:
    qwen = load_trace(qwen_style_trace(tmp_path / "qwen.jsonl"), timestamp_unit="s")
    assert {r.block_tokens for r in qwen} == {16}
    assert load_trace(qwen_style_trace(tmp_path / "q64.jsonl", block=64))[0].block_tokens == 64
    assert {r.block_tokens for r in load_trace(sample_trace_path(), 200)} == {512}
    if FULL_TRACE.is_file():
        assert infer_block_tokens(load_trace(FULL_TRACE, 2000)) == 512
    # Told, the loader believes the caller.
    assert {r.block_tokens for r in load_trace(tmp_path / "qwen.jsonl", block_tokens=32)} == {32}
    with pytest.raises(ValueError, match="block_tokens 0"):
        load_trace(tmp_path / "qwen.jsonl", block_tokens=0)


def test_inference_outvotes_odd_rows_and_sizes_rows_without_input_length(tmp_path: Path) -> None:
    rows = [{"hash_ids": [i, i + 1, i + 2], "input_length": 40} for i in range(0, 60, 3)]
    rows.append({"hash_ids": [900, 901], "input_length": 5000})  # a mismatched row votes 4096
    rows.append({"hash_ids": [1, 2, 3, 4]})  # no input_length: every block full
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reqs = load_trace(path)
    assert reqs[0].block_tokens == 16
    assert reqs[-1].input_length == 4 * 16 and reqs[-2].input_length == 5000


def test_reference_counts_blocks_of_the_trace(tmp_path: Path) -> None:
    reqs = load_trace(qwen_style_trace(tmp_path / "qwen.jsonl"), timestamp_unit="s")
    fig = prefix_reuse(reqs)
    assert fig.hit_tokens == brute_force_token_hits(reqs, 16)
    assert fig.hit_tokens != brute_force_token_hits(reqs, 512)  # 512 would cap every hit at input_length
    assert 0.2 < fig.token_hit_ratio < 0.95


@pytest.mark.parametrize("page_size", [16, 64])
def test_an_unbounded_node_reproduces_a_16_token_trace(tmp_path: Path, page_size: int) -> None:
    """Pages of one block give exactly the trace's figure; pages of four blocks hit only where
    all four repeat, so at most the figure."""
    reqs = load_trace(qwen_style_trace(tmp_path / "qwen.jsonl"), timestamp_unit="s")
    fig = prefix_reuse(reqs)
    node = Node(NodeConfig(page_size=page_size, device_capacity_tokens=(fig.distinct_blocks + 8) * 64))
    s = replay(LocalTarget(node), reqs, progress=False).summary()
    assert s["failed_requests"] == 0 and s["verify_errors"] == 0
    hit = sum(s["hit_tokens"].values())
    if page_size == 16:
        assert hit == fig.hit_tokens
    else:
        assert 0 < hit <= fig.hit_tokens


def test_a_page_that_straddles_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="block of 16 tokens"):
        request_from_block_ids([1, 2], 20, 24, block_tokens=16)
    assert request_from_block_ids([1, 2, 3, 4], 64, 32, block_tokens=16).pages == 2


def test_generate_takes_block_tokens_and_replay_cli_infers_them(tmp_path: Path) -> None:
    trace = qwen_style_trace(tmp_path / "qwen.jsonl", chats=15)
    with NodeProcess(["--page-size", "16", "--device-capacity-tokens", "65536",
                      "--hicache-storage-backend", "file",
                      "--hicache-storage-backend-extra-config", json.dumps({"path": str(tmp_path / "l3")})]) as proc:
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            one = client.post("/generate", json={"hash_ids": [5, 6, 7], "input_length": 40, "block_tokens": 16})
            assert one.status_code == 200, one.text
            assert one.json()["pages"] == 3  # 3 blocks of 16 tokens, pages of 16
            bad = client.post("/generate", json={"hash_ids": [5], "block_tokens": 0})
            assert bad.status_code == 400 and "block_tokens" in bad.json()["error"]["message"]
            straddle = client.post("/generate", json={"hash_ids": [5, 6], "block_tokens": 24})
            assert straddle.status_code == 400 and "block of 24" in straddle.json()["error"]["message"]
        out = subprocess.run([sys.executable, "-m", "hicache_core.cli.main", "replay", str(trace), "--url", proc.url,
                              "--timestamp-unit", "s", "--json", "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["failed_requests"] == 0 and summary["verify_errors"] == 0
    fig = prefix_reuse(load_trace(trace))
    assert summary["trace_reference"]["hit_tokens"] == fig.hit_tokens
    assert sum(summary["hit_tokens"].values()) > 0
