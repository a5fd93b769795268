"""The storage controller: attaches an L3 backend to the host pool (L2) and moves pages.

Contract with the node (``/work/controller_contract.md``), as implemented. Refinements and
deviations are listed here; the node owner reads them here.

```python
from hicache_core.controller import (
    StorageController, ControllerGroup, ControllerError, PrefetchOperation, PrefetchResult,
    PREFETCH_POLICIES, WRITE_POLICIES,
)
ctl = StorageController(host_pool, storage_config, registry=None, metrics_registry=None, rank=0,
                        breaker_threshold=5, auto_reattach=True, probe_interval_s=2.0,
                        idle_check=None,
                        # keyword-only extras (refinement):
                        io_timeout_s=10.0, quiesce_timeout_s=5.0, attach_timeout_s=60.0,
                        prefetch_policy="best_effort", write_policy="write_through",
                        add_namespace_suffix=False, prefetch_workers=2)
msg = ctl.attach(backend, extra_config=None, prefetch_policy=None, write_policy=None,
                 replace=False, switch_mode="quiesce")      # or "idle"; ControllerError on refusal
msg = ctl.detach(switch_mode="quiesce")                       # idempotent
ctl.status() -> dict; ctl.backend_view() -> dict; ctl.attached; ctl.write_policy; ctl.close()
op = ctl.prefetch(page_hashes, prefix_hashes=None)            # PrefetchOperation | None
res = op.wait()                                               # PrefetchResult
ok = ctl.backup(page_hashes, host_indices, on_done=None)      # bool
ctl.should_backup(event, hit_count=1)                         # bool
```

Refinements (additions; nothing in the contract was removed or renamed):

- ``prefetch()`` returns None when detached or when ``len(page_hashes) * page_size`` is
  below ``prefetch_threshold``. The L3 existence query runs on the prefetch worker, not on
  the request thread; when L3 holds fewer leading pages than the threshold the operation
  completes with an empty result (``res.pages == 0``).
- ``PrefetchResult`` also has ``pages`` (== ``len(page_hashes)``), ``complete`` (every page
  L3 reported was delivered) and ``reason`` (why not). ``storage_hit_pages`` is the number of
  leading pages L3 reported as present (>= ``pages``).
- ``PrefetchOperation`` also has ``done`` (the worker finished), ``loaded_pages`` and
  ``cancel()``: a request that goes away without calling ``wait()`` must call ``cancel()``
  so its pages go back to the pool. A second ``wait()`` raises ``RuntimeError``.
- ``backup()``: ``on_done`` runs on the backup thread (or synchronously when nothing was
  queued). When a backend call times out, ``on_done`` runs only once that call has returned,
  because the backend may still be reading those host pages. On an MLA non-writer rank
  (``storage_config.is_writer_rank`` False) nothing is written and ``on_done`` gets True
  for every page (rank 0 writes them).
- DEVIATION (keys): by default the controller hands the backend the page hashes as given,
  WITHOUT appending ``namespace_suffix()``: every backend appends it itself (as SGLang's
  backends do, and as every first-party plugin here does), so appending it here too would
  double it and break key compatibility with SGLang. ``add_namespace_suffix=True`` makes
  the controller append it, for backends that do not. The node still passes bare hashes.
- ``status()`` keys: rank, state ("attached" | "detached" | "degraded"), backend,
  extra_config (secret-looking values redacted), prefetch_policy, write_policy, policies
  {prefetch, write, prefetch_threshold, prefetch_timeout_base, prefetch_timeout_per_ki_token},
  attached_at, breaker {state "closed"|"open", threshold, consecutive_failures, trips,
  opened_at, reason, last_probe_at, last_probe_error, probes, auto_reattach,
  probe_interval_s}, counters {...}, queues {prefetch, backup}, fault_injection, io_timeout_s,
  namespace_suffix, last_error, last_error_at. While degraded, ``backend`` and
  ``extra_config`` name the backend being probed; ``backend_view()`` shows None (not in force).
- ``switch_mode="idle"``: ``idle_check()`` returns None when idle, else a reason; the
  controller raises ``ControllerError(reason)`` when the reason starts with "Reject", else
  ``"Reject attach: " + reason`` (e.g. the node returns "scheduler is not idle.
  #queue-req=3 #running-req=1"). The controller's own workers must be idle too.
- Extra-config keys the controller consumes and does not pass to the backend:
  ``prefetch_threshold``, ``prefetch_timeout_base``, ``prefetch_timeout_per_ki_token`` and
  ``fault_injection`` (see ``hicache_core.controller.faults``).
- ``ctl.metrics`` (``ControllerMetrics``) holds the Prometheus series (``metrics.registry``);
  ``ctl.fault_injector`` is the failure-injection wrapper of the attached backend, if any.
- ``ControllerGroup`` also has ``status()`` ({"state", "ranks": [...]}), ``backend_view()``
  (rank 0's), ``attached``, ``write_policy`` and ``close()``; messages are "rank N: ...".
"""

from hicache_core.controller.controller import StorageController
from hicache_core.controller.errors import ControllerError
from hicache_core.controller.faults import FaultInjectingStorage, InjectedFault, fault_switch
from hicache_core.controller.group import ControllerGroup
from hicache_core.controller.metrics import ControllerMetrics
from hicache_core.controller.policies import PREFETCH_POLICIES, WRITE_POLICIES, PrefetchKnobs
from hicache_core.controller.prefetch import PrefetchOperation, PrefetchResult

__all__ = [
    "PREFETCH_POLICIES",
    "WRITE_POLICIES",
    "ControllerError",
    "ControllerGroup",
    "ControllerMetrics",
    "FaultInjectingStorage",
    "InjectedFault",
    "PrefetchKnobs",
    "PrefetchOperation",
    "PrefetchResult",
    "StorageController",
    "fault_switch",
]
