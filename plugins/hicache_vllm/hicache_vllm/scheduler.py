"""The connector's scheduler side: ask L3 for leading hits, plan loads and saves.

- ``num_new_matched_tokens``: the request's page hashes past vLLM's own (block-aligned) prefix
  hit, asked of the backend with ``batch_exists``; at least one token is always left to
  compute (vLLM needs the last prompt token's logits). Any failure: 0.
- ``after_alloc``: once vLLM has allocated blocks for a hit, the load is planned.
- ``build``: each step, the planned loads, and the pages whose every token has its KV computed
  by the end of this step (prompt and output alike) that L3 is not known to hold yet.

Requests whose KV depends on more than their token ids are left alone (multimodal inputs,
prompt embeddings, LoRA adapters): their pages have no key that names them. A request can opt
out of loads or saves through ``kv_transfer_params`` (``request_opts``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from hicache_vllm.identity import extend_hashes, request_seed
from hicache_vllm.plan import PageTransfer, StepPlan
from hicache_vllm.store import GuardedStore

log = logging.getLogger(__name__)

#: How many recently stored page hashes the scheduler remembers, so shared prefixes are not
#: written again by every request that computes them.
RECENT_SAVES = 65536


@dataclass
class _Tracked:
    request: Any
    seed: str | None
    block_ids: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    #: Pages [0, saved_upto) are in vLLM's prefix hit, loaded from L3, or planned for saving.
    saved_upto: int = 0


def cacheable(request: Any) -> bool:
    """True when the request's KV is a function of its token ids alone."""
    return not (
        getattr(request, "mm_features", None)
        or getattr(request, "lora_request", None) is not None
        or getattr(request, "prompt_embeds", None) is not None
    )


def request_opts(request: Any) -> dict[str, bool]:
    """Per-request switches: ``SamplingParams(extra_args={"kv_transfer_params": {"hicache":
    {"load": false, "save": false}}})`` (both default true)."""
    params = getattr(request, "kv_transfer_params", None) or {}
    opts = params.get("hicache") if isinstance(params, dict) else None
    opts = opts if isinstance(opts, dict) else {}
    return {"load": opts.get("load", True) is not False, "save": opts.get("save", True) is not False}


class SchedulerSide:
    def __init__(self, store: GuardedStore | None, block_size: int, load: bool = True, save: bool = True) -> None:
        self.store = store
        self.block_size = block_size
        self.load_enabled = load and store is not None
        self.save_enabled = save and store is not None
        self._lookups: dict[str, tuple[int, int]] = {}  # req_id -> (first page, hit pages)
        self._pending_loads: dict[str, PageTransfer] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        #: Tokens each request got from L3 (req_id -> tokens); what tests and logs read.
        self.hit_tokens: dict[str, int] = {}
        self.hit_tokens_total = 0

    # ------------------------------------------------------------------ lookups
    def _hashes(self, request: Any, pages: int) -> list[str]:
        tracked = self._tracked.get(request.request_id)
        if tracked is None:
            tracked = _Tracked(request, request_seed(getattr(request, "cache_salt", None)))
            self._tracked[request.request_id] = tracked
        return extend_hashes(tracked.hashes, request.all_token_ids, self.block_size, pages, tracked.seed)

    def num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        if not self.load_enabled or not cacheable(request) or not request_opts(request)["load"]:
            return 0, False
        B = self.block_size
        first = num_computed_tokens // B
        last = (request.num_tokens - 1) // B  # leave the last token to compute
        if last <= first:
            return 0, False
        hashes = self._hashes(request, last)
        assert self.store is not None
        hits = self.store.leading_hits(hashes[first:last])
        self._lookups[request.request_id] = (first, hits)
        return hits * B, False

    def after_alloc(self, request: Any, block_ids: list[int], num_external_tokens: int) -> None:
        req_id = request.request_id
        if not cacheable(request):
            return
        tracked = self._tracked.get(req_id)
        if tracked is None:
            tracked = _Tracked(request, request_seed(getattr(request, "cache_salt", None)))
            self._tracked[req_id] = tracked
        tracked.request = request
        tracked.block_ids = list(block_ids)
        first, _ = self._lookups.pop(req_id, (request.num_computed_tokens // self.block_size, 0))
        pages = num_external_tokens // self.block_size
        tracked.saved_upto = max(tracked.saved_upto, first + pages)
        if pages > 0:
            hashes = self._hashes(request, first + pages)
            self._pending_loads[req_id] = PageTransfer(
                req_id, hashes[first : first + pages], tracked.block_ids[first : first + pages]
            )
            self.hit_tokens[req_id] = self.hit_tokens.get(req_id, 0) + pages * self.block_size
            self.hit_tokens_total += pages * self.block_size
        if not request_opts(request)["save"]:
            del self._tracked[req_id]  # untracked requests are never saved

    # ------------------------------------------------------------------ each step
    def build(self, scheduler_output: Any) -> StepPlan:
        plan = StepPlan(loads=list(self._pending_loads.values()))
        self._pending_loads.clear()
        if not self.save_enabled:
            return plan
        scheduled: dict[str, int] = dict(scheduler_output.num_scheduled_tokens)
        for new in scheduler_output.scheduled_new_reqs:
            tracked = self._tracked.get(new.req_id)
            if tracked is not None:
                tracked.block_ids = list(new.block_ids[0])
                self._plan_save(plan, tracked, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        resumed: set[str] = set(getattr(cached, "resumed_req_ids", ()) or ())
        for i, req_id in enumerate(cached.req_ids):
            tracked = self._tracked.get(req_id)
            if tracked is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if new_blocks is not None:
                if req_id in resumed:  # after preemption: the whole block list
                    tracked.block_ids = list(new_blocks[0])
                else:
                    tracked.block_ids.extend(new_blocks[0])
            self._plan_save(plan, tracked, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        return plan

    def _plan_save(self, plan: StepPlan, tracked: _Tracked, computed_after_step: int) -> None:
        B = self.block_size
        full = min(computed_after_step, len(tracked.request.all_token_ids), len(tracked.block_ids) * B) // B
        if full <= tracked.saved_upto:
            return
        hashes = self._hashes(tracked.request, full)
        pages = [p for p in range(tracked.saved_upto, full) if hashes[p] not in self._recent]
        tracked.saved_upto = full
        if not pages:
            return
        for p in pages:
            self._recent[hashes[p]] = None
        while len(self._recent) > RECENT_SAVES:
            self._recent.popitem(last=False)
        plan.saves.append(PageTransfer(
            tracked.request.request_id, [hashes[p] for p in pages], [tracked.block_ids[p] for p in pages]
        ))

    def finished(self, request: Any) -> None:
        req_id = request.request_id
        self._tracked.pop(req_id, None)
        self._lookups.pop(req_id, None)
        self._pending_loads.pop(req_id, None)
        hit = self.hit_tokens.pop(req_id, 0)
        if hit:
            log.info("hicache-vllm: request %s got %d prompt tokens from L3", req_id, hit)
