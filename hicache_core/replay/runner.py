"""Replaying a trace: pacing, concurrency, progress, per-request records and the summary.

Requests are dispatched in trace order, either as fast as the node answers or at the
trace's own pace divided by ``speed``, with at most ``concurrency`` in flight. Paced
requests still go in file order: one whose timestamp is earlier than its predecessor's goes at
once. ``max_gap_s`` bounds any single wait; the trace time it cuts out is cut from every later
request too, so they keep their spacing (a trace with hours of idle time, or timestamps in a
finer unit than ms, still ends). ``actions``
run between dispatches (the attach/detach scenario: the replay keeps going around them),
and every record carries the ``phase`` label in force when it was dispatched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from hicache_core.replay.reference import prefix_reuse
from hicache_core.replay.targets import Target
from hicache_core.replay.trace import TraceRequest

TIERS: tuple[str, ...] = ("device", "host", "storage")

#: An action run before request ``index`` is dispatched; returns the new phase label (or None).
Action = Callable[[], "str | None"]


@dataclass
class RequestRecord:
    index: int
    timestamp_ms: float
    phase: str
    input_tokens: int
    cached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    verify_errors: int = 0
    bytes_loaded: int = 0
    latency_ms: float = 0.0
    error: str = ""
    storage_backend: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class ReplayResult:
    records: list[RequestRecord]
    wall_seconds: float
    status_before: dict[str, Any] | None
    status_after: dict[str, Any] | None
    reference: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, records: Sequence[RequestRecord] | None = None) -> dict[str, Any]:
        """The JSON summary (``hicache replay --json``)."""
        recs = self.records if records is None else list(records)
        ok = [r for r in recs if r.ok]
        input_tokens = sum(r.input_tokens for r in ok)
        hit = {t: sum(r.cached[t] for r in ok) for t in TIERS}
        total_hit = sum(hit.values())
        out: dict[str, Any] = {
            "requests": len(recs),
            "failed_requests": len(recs) - len(ok),
            "input_tokens": input_tokens,
            "hit_tokens": hit,
            "token_hit_ratio": total_hit / input_tokens if input_tokens else 0.0,
            "tier_hit_ratio": {t: (hit[t] / input_tokens if input_tokens else 0.0) for t in TIERS},
            "verify_errors": sum(r.verify_errors for r in recs),
            "bytes_loaded": sum(r.bytes_loaded for r in ok),
            "bytes_stored": self._stored_delta(),
            "wall_seconds": self.wall_seconds,
            "requests_per_second": len(recs) / self.wall_seconds if self.wall_seconds > 0 else 0.0,
            "mean_latency_ms": (sum(r.latency_ms for r in ok) / len(ok)) if ok else 0.0,
        }
        if records is None:
            out["trace_reference"] = self.reference
            out["node_verify_errors"] = self._node_verify_errors()
            out["errors"] = sorted({r.error for r in recs if r.error})[:10]
            out["phases"] = self.phase_summaries()
            out["events"] = self.events
        return out

    def phase_summaries(self) -> list[dict[str, Any]]:
        order: list[str] = []
        for r in self.records:
            if r.phase not in order:
                order.append(r.phase)
        out = []
        for phase in order:
            recs = [r for r in self.records if r.phase == phase]
            s = self.summary(recs)
            out.append({"phase": phase, "requests": s["requests"], "failed_requests": s["failed_requests"],
                        "input_tokens": s["input_tokens"], "hit_tokens": s["hit_tokens"],
                        "token_hit_ratio": s["token_hit_ratio"], "verify_errors": s["verify_errors"]})
        return out

    def _stored_delta(self) -> int:
        if not self.status_after:
            return 0
        after = int(self.status_after["totals"]["bytes_stored"])
        before = int(self.status_before["totals"]["bytes_stored"]) if self.status_before else 0
        return after - before

    def _node_verify_errors(self) -> int | None:
        if not self.status_after:
            return None
        return int(self.status_after["totals"]["verify_errors"])


def replay(
    target: Target,
    requests: Sequence[TraceRequest],
    speed: float | None = None,
    concurrency: int = 1,
    actions: dict[int, Action] | None = None,
    phase: str = "replay",
    progress: bool = True,
    description: str = "replaying",
    max_gap_s: float | None = None,
) -> ReplayResult:
    """Send ``requests`` to ``target``; see the module docstring. Never raises for a failed request."""
    if concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    if speed is not None and speed <= 0:
        raise ValueError("--speed must be positive")
    if max_gap_s is not None and max_gap_s < 0:
        raise ValueError("--max-gap must not be negative")
    actions = dict(actions or {})
    records: list[RequestRecord | None] = [None] * len(requests)
    events: list[dict[str, Any]] = []
    slots = threading.Semaphore(concurrency)
    status_before = _safe_status(target)
    first_ts = requests[0].timestamp_ms if requests else 0.0
    current_phase = phase
    t0 = time.perf_counter()
    cut = 0.0  # wall seconds of idle trace time cut out by max_gap_s so far

    def run_one(pos: int, req: TraceRequest, label: str) -> RequestRecord:
        start = time.perf_counter()
        rec = RequestRecord(req.index, req.timestamp_ms, label, req.input_length)
        try:
            ans = target.send(req)
            details = ans.get("cached_tokens_details") or ans["meta_info"]["cached_tokens_details"]
            rec.cached = {t: int(details.get(t, 0)) for t in TIERS}
            rec.storage_backend = details.get("storage_backend")
            rec.verify_errors = int(ans.get("verify_errors", 0))
            loaded = ans.get("bytes_loaded", {})
            rec.bytes_loaded = int(sum(loaded.values())) if isinstance(loaded, dict) else int(loaded)
        except Exception as exc:  # a failed request is a result, counted and shown
            rec.error = f"{type(exc).__name__}: {exc}"[:300]
        rec.latency_ms = (time.perf_counter() - start) * 1e3
        records[pos] = rec
        slots.release()
        return rec

    # Fixed widths: the whole line fits 80 columns ("1000/…" did not), the bar takes what is left.
    bar = Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, max_width=20)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6)),
        MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=11)),
        TextColumn("hit {task.fields[hit]:.1%} L3 {task.fields[l3]:.1%} failed {task.fields[failed]}",
                   table_column=Column(no_wrap=True, min_width=30)),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)), disable=not progress, transient=False,
    )
    futures: list[Future[RequestRecord]] = []
    with bar, ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="replay") as pool:
        task = bar.add_task(description, total=len(requests), hit=0.0, l3=0.0, failed=0)
        # Running totals, not a pass over every record per update: that was quadratic in the trace.
        totals = {"done": 0, "tokens": 0, "hit": 0, "l3": 0, "failed": 0}
        totals_lock = threading.Lock()  # callbacks run on the worker threads

        def refresh(fut: Future[RequestRecord]) -> None:
            rec = fut.result()
            with totals_lock:
                totals["done"] += 1
                totals["hit"] += sum(rec.cached.values())
                totals["l3"] += rec.cached["storage"]
                if rec.ok:
                    totals["tokens"] += rec.input_tokens
                else:
                    totals["failed"] += 1
                done, tokens = totals["done"], totals["tokens"] or 1
                if done % 10 and done != len(requests):
                    bar.update(task, completed=done)
                    return
                bar.update(task, completed=done, hit=totals["hit"] / tokens, l3=totals["l3"] / tokens,
                           failed=totals["failed"])

        for pos, req in enumerate(requests):
            if pos in actions:
                # Actions run while earlier requests may still be in flight.
                t_action = time.perf_counter()
                try:
                    label = actions[pos]()
                    events.append({"before_request": pos, "ok": True, "phase": label or current_phase,
                                   "seconds": time.perf_counter() - t_action})
                except Exception as exc:
                    label = None
                    events.append({"before_request": pos, "ok": False, "error": str(exc),
                                   "seconds": time.perf_counter() - t_action})
                if label:
                    current_phase = label
            if speed is not None:
                due = t0 - cut + (req.timestamp_ms - first_ts) / 1000.0 / speed
                delay = due - time.perf_counter()
                if max_gap_s is not None and delay > max_gap_s:
                    cut += delay - max_gap_s
                    delay = max_gap_s
                if delay > 0:
                    time.sleep(delay)
            slots.acquire()
            fut = pool.submit(run_one, pos, req, current_phase)
            fut.add_done_callback(refresh)
            futures.append(fut)
        for fut in futures:
            fut.result()
    wall = time.perf_counter() - t0
    status_after = settled_status(target)
    final = [r for r in records if r is not None]
    return ReplayResult(final, wall, status_before, status_after, prefix_reuse(requests).to_dict(), events)


def backups_in_flight(status: dict[str, Any] | None) -> int:
    """L2 -> L3 pages queued and not yet confirmed, over every rank of a node's status."""
    if not status:
        return 0
    return sum(int(r.get("backup_pages_in_flight", 0) or 0) for r in status.get("ranks", []))


def settled_status(target: Target, timeout_s: float = 30.0, poll_s: float = 0.05) -> dict[str, Any] | None:
    """The node's status once its backups in flight have landed (or ``timeout_s`` passed).

    Taken at once, "bytes stored" missed the backups of the last requests, still in flight.
    """
    deadline = time.monotonic() + timeout_s
    status = _safe_status(target)
    while backups_in_flight(status) and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = _safe_status(target)
    return status


def _safe_status(target: Target) -> dict[str, Any] | None:
    try:
        return target.status()
    except Exception:
        return None
