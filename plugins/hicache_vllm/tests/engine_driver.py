"""Drive the real vLLM engine through phases and print one JSON line of results.

Run with the vLLM venv's python (``scripts/setup-vllm.sh``), never imported by pytest:

    python engine_driver.py SPEC.json

SPEC: ``{"model_dir": ..., "prompts": [[token ids], ...], "max_tokens": 8, "phases": [...]}``;
each phase ``{"name": ..., "connector": null | {kv_connector_extra_config}, "runs": N}``
starts an engine (in this process, one after the other), generates every prompt ``runs``
times greedily with vLLM's prefix cache reset before each run, and records per run the output
tokens, ``num_cached_tokens`` (what came from outside vLLM's prefix cache after a reset) and
the connectors' counters. The tiny Llama model is written by ``write_tiny_model`` when absent.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process


def write_tiny_model(path: str) -> None:
    """A Llama-architecture model with random weights (seeded), written locally: no download."""
    if os.path.exists(os.path.join(path, "config.json")):
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        torch_dtype="float32", bos_token_id=1, eos_token_id=2,
        # Wider than the default 0.02 so attention is sharp: a wrong KV changes the output.
        initializer_range=0.2,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)


def run_phase(spec: dict, phase: dict) -> dict:
    import hicache_vllm.connector as hc
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs: dict = {}
    if phase.get("connector") is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="HiCacheConnector", kv_role="kv_both",
            kv_connector_extra_config=phase["connector"],
        )
    hc.INSTANCES.clear()
    t0 = time.perf_counter()
    llm = LLM(model=spec["model_dir"], skip_tokenizer_init=True, dtype="float32",
              max_model_len=spec.get("max_model_len", 2048), enforce_eager=True, seed=0, **kwargs)
    startup_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 8), detokenize=False,
                            ignore_eos=True, logprobs=0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    runs = []
    for _ in range(int(phase.get("runs", 1))):
        llm.reset_prefix_cache()
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        for c in hc.INSTANCES:  # pages still on the writer thread are stored before the next run
            if c.worker is not None:
                c.worker.flush()
        runs.append({
            "seconds": time.perf_counter() - t,
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "finish": [o.outputs[0].finish_reason for o in outs],
            # The sampled token's logprob at each step: any difference in the KV shows here.
            "logprobs": [[float(step[t].logprob)
                          for t, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs or [])]
                         for o in outs],
            "cached": [int(o.num_cached_tokens or 0) for o in outs],
            "connectors": [c.stats() for c in hc.INSTANCES],
        })
    result = {"name": phase["name"], "startup_s": startup_s, "runs": runs}
    for c in hc.INSTANCES:
        c.shutdown()
    del llm
    gc.collect()
    return result


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    write_tiny_model(spec["model_dir"])
    phases = [run_phase(spec, phase) for phase in spec["phases"]]
    print("RESULT " + json.dumps({"phases": phases}), flush=True)


if __name__ == "__main__":
    main()
