"""Time to first token on the real vLLM CPU engine with and without an L3 hit.

Run with the vLLM venv's python (``bash scripts/setup-vllm.sh`` builds it):

    .venv-vllm/bin/python plugins/hicache_vllm/bench/bench_ttft.py [--backend file]
        [--backend-config '{"path": "/tmp/hicache-vllm-bench"}'] [--lengths 512,1024,2048,4096]

For each prompt length it measures, on random prompts, with vLLM's prefix cache reset before
every request (``max_tokens=1``, so the wall time of ``generate`` is the TTFT), interleaved in
one engine with the connector:

- ``no L3``: a request that opts out of L3 (``kv_transfer_params`` ``{"hicache": {"load":
  false, "save": false}}``): what the engine does without an L3;
- ``L3 miss``: the connector engine on a prompt L3 does not hold (it computes and stores; the
  ``L3 save`` column is the time in the backend's ``batch_set_v1``, on the writer thread unless
  ``--sync-save``);
- ``L3 hit``: the same prompt again: every full page but the last token's comes from L3;

beside the L3 read bandwidth: in the engine (pages loaded / time in the backend's
``batch_get_v1``) and of the backend alone (``batch_get_v1`` of the same stored pages into a
staging pool of the same format, outside the engine). The model is a random-weight
Llama-architecture model written locally (no download); its size is set by flags.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def write_model(path: str, layers: int, hidden: int, heads: int, kv_heads: int, max_len: int) -> None:
    if os.path.exists(os.path.join(path, "config.json")):
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=3 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_len, torch_dtype="float32", bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)


def ttft(llm, prompt: list[int], l3: bool = True) -> float:
    """Wall time of one request with max_tokens=1 after a prefix-cache reset; ``l3=False``
    opts the request out of L3 loads and saves (the engine without an L3)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    extra = None if l3 else {"kv_transfer_params": {"hicache": {"load": False, "save": False}}}
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, extra_args=extra)
    llm.reset_prefix_cache()
    t = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="file")
    ap.add_argument("--backend-config", default=None, help="the backend's extra-config, JSON")
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--sync-save", action="store_true", help="store pages in the step (async_save false)")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    work = tempfile.mkdtemp(prefix="hicache-vllm-bench-")
    try:
        run(args, lengths, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the model and the file backend's pages


def run(args: argparse.Namespace, lengths: list[int], work: str) -> None:
    backend_config = json.loads(args.backend_config) if args.backend_config else {"path": os.path.join(work, "l3")}
    model = os.path.join(work, "model")
    max_len = max(lengths) + 64
    write_model(model, args.layers, args.hidden, args.heads, args.kv_heads, max_len)

    import hicache_vllm.connector as hc
    from hicache_vllm.identity import storage_config
    from hicache_vllm.layout import staging_pool
    from hicache_vllm.store import GuardedStore
    from vllm import LLM
    from vllm.config import KVTransferConfig

    from hicache_core.keys import page_hashes

    rng = random.Random(0)
    prompts = {n: [[rng.randrange(3, 4096) for _ in range(n)] for _ in range(args.reps)] for n in lengths}
    fresh = {n: [[rng.randrange(3, 4096) for _ in range(n)] for _ in range(args.reps)] for n in lengths}
    common = dict(model=model, skip_tokenizer_init=True, dtype="float32", max_model_len=max_len,
                  enforce_eager=True, seed=0)

    def warm_up(llm: LLM, hits: bool) -> None:
        """One throwaway prompt of each length (twice with L3: a miss, then a hit), so every
        measured request runs shapes the CPU kernels have already seen."""
        for n in lengths:
            p = [rng.randrange(3, 4096) for _ in range(n)]
            ttft(llm, p)
            if hits:
                next(c for c in hc.INSTANCES if c.worker is not None).worker.flush()
                ttft(llm, p)

    ktc = KVTransferConfig(kv_connector="HiCacheConnector", kv_role="kv_both", kv_connector_extra_config={
        "backend": args.backend, "backend_config": backend_config, "async_save": not args.sync_save})
    llm = LLM(**common, kv_transfer_config=ktc)
    worker = next(c for c in hc.INSTANCES if c.worker is not None)
    warm_up(llm, hits=True)
    rows = []
    for n in lengths:
        off, miss, hit, loaded, load_us, save_us = [], [], [], 0, 0, 0
        for p, q in zip(prompts[n], fresh[n]):
            # Interleaved, so the load of a shared machine weighs on all three alike.
            off.append(ttft(llm, q, l3=False))
            saved_before = worker.store.counters["save_us"]
            miss.append(ttft(llm, p))
            worker.worker.flush()  # the miss's pages are written off the step; wait before the hit
            save_us += worker.store.counters["save_us"] - saved_before
            before = dict(worker.store.counters)
            hit.append(ttft(llm, p))
            loaded += worker.store.counters["load_pages"] - before["load_pages"]
            load_us += worker.store.counters["load_us"] - before["load_us"]
        rows.append((n, statistics.median(off), statistics.median(miss), statistics.median(hit), loaded // len(prompts[n]),
                     save_us / len(prompts[n]) / 1e3, load_us / len(prompts[n]) / 1e3, loaded * worker.layout.page_bytes / max(load_us, 1) * 1e6 / 2**30))
    layout, config = worker.layout, worker.store.config
    del llm
    gc.collect()

    # The backend alone: read the longest prompts' stored pages into a staging pool of the same format.
    n = max(lengths)
    hashes = [h for p in prompts[n] for h in page_hashes(p, layout.block_size)[: (n - 1) // layout.block_size]]
    store = GuardedStore(args.backend, storage_config(config.model_name.split("/", 1)[1], config.extra(), tp_size=1),
                         staging_pool(layout, len(hashes)))
    pages = list(range(len(hashes)))
    assert store.leading_hits(hashes[: (n - 1) // layout.block_size]) > 0, "the engine stored nothing"
    times = []
    for _ in range(5):
        t = time.perf_counter()
        ok = store.load(hashes, pages)
        times.append(time.perf_counter() - t)
    direct = sum(ok) * layout.page_bytes / statistics.median(times) / 2**30
    store.close()

    kib = layout.page_bytes // 1024
    print(f"\nvLLM {__import__('vllm').__version__} CPU, model: {args.layers} layers, {args.kv_heads} KV heads x "
          f"{layout.head_size}, fp32; page = {layout.block_size} tokens = {kib} KiB; backend {args.backend!r}; "
          f"median of {args.reps}")
    print(f"{'prompt':>7} {'no L3':>13} {'L3 miss':>10} {'L3 hit':>10} {'hit/none':>9} {'pages':>6} "
          f"{'L3 save':>9} {'L3 load':>9} {'L3 read in engine':>18}")
    for n, b, m, h, pg, sms, lms, bw in rows:
        print(f"{n:>7} {b * 1e3:>10.1f} ms {m * 1e3:>7.1f} ms {h * 1e3:>7.1f} ms {h / b:>8.2f}x {pg:>6} "
              f"{sms:>6.1f} ms {lms:>6.1f} ms {bw:>13.2f} GiB/s")
    print(f"backend {args.backend!r} alone, batch_get_v1 of {sum(ok)} stored pages ({kib} KiB each): "
          f"{direct:.2f} GiB/s")


if __name__ == "__main__":
    main()
