"""Soak: a real trace against a 2-rank node on a real Mooncake cluster, under every fault at once.

    .venv/bin/python bench/soak.py [--requests 2000] [--trace /work/shared/traces/...] [--json]

Three runs over the same first N requests of the Mooncake conversation trace, each on a node
with ``--dp-size 2`` (tiny model, pages of 128 tokens, L1 64 Ki + L2 128 Ki tokens per rank)
and the ``mooncake`` backend on a local cluster (metadata server, master, one storage node):

1. fault-free;
2. restart only: the master killed at 40 % and restarted 3 s later, nothing else (Mooncake
   keeps objects in memory: what was stored before is gone in any run): the reference for
   the L3 hit ratio after recovery;
3. faulted, all together: 10 % of backend calls fail and every call is delayed 0-20 ms
   (``fault_injection``); a store-full phase (every write refused, 25-35 % of the requests);
   the Mooncake master killed (``kill -9``) at 40 % and restarted 3 s later (it comes back
   empty); a detach and attach through the admin path every 30 s (attach retried every
   0.5 s until accepted, as an operator would).

Requests follow the trace's timestamps, ``--speed`` (8) times faster, 4 in flight.

It prints one table and exits 1 unless: zero failed requests, zero wrong bytes (every page
loaded from L2 or L3 is verified against the bytes it must hold), the L3 hit ratio over the
last quarter of the requests (after recovery) within 10 % of the restart-only run's, and the
process's RSS and thread count flat (end within 25 % / 8 threads of their value after warm-up).
Breaker trips are counted and shown. About 5 minutes on 2 cores. Needs hicache-mooncake and
Mooncake's binaries (``bash scripts/setup.sh --all``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from hicache_core.controller import ControllerError, fault_switch
from hicache_core.node import Node, NodeConfig
from hicache_core.replay.runner import ReplayResult, replay
from hicache_core.replay.targets import LocalTarget
from hicache_core.replay.trace import load_trace
from hicache_core.spec.storage import HiCacheStorage

TRACE = Path("/work/shared/traces/mooncake_conversation_trace.jsonl")
SWITCH = "soak"


def proc_status() -> tuple[int, int]:
    """(RSS bytes, threads) of this process, from /proc."""
    rss = threads = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


class Sampler(threading.Thread):
    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((time.monotonic(), *proc_status()))

    def stop(self) -> None:
        self._stop.set()


def _mooncake_clients() -> dict[str, int]:
    """Mooncake clients this process set up and reused so far (``hicache_mooncake.client_pool``)."""
    from hicache_mooncake.client_pool import client_pool

    pool = client_pool()
    return {"opened": pool.opened, "reused": pool.reused}


def make_node() -> Node:
    return Node(NodeConfig(page_size=128, dp_size=2, device_capacity_tokens=64 * 1024, host_capacity_tokens=128 * 1024,
                           breaker_threshold=5, probe_interval_s=2.0, io_timeout_s=5.0))


def l3_ratio(result: ReplayResult, start: int) -> float:
    recs = [r for r in result.records[start:] if r.ok]
    tokens = sum(r.input_tokens for r in recs)
    return sum(r.cached["storage"] for r in recs) / tokens if tokens else 0.0


def run(cluster: Any, requests: list[Any], faults: bool, console: Console, speed: float = 8.0,
        restart_only: bool = False) -> dict[str, Any]:
    """One replay; ``faults``: every fault; ``restart_only``: only the master kill + restart."""
    extra: dict[str, Any] = {**cluster.extra_config(local_buffer_size="16mb"), "prefetch_threshold": 0}
    if faults:
        extra["fault_injection"] = {"fail_prob": 0.1, "delay_ms": [0, 20], "seed": 16, "switch": SWITCH}
    switch = fault_switch(SWITCH)
    switch.refuse_all = False
    clients_before = _mooncake_clients()
    node = make_node()
    node.attach("mooncake", extra)
    n = len(requests)
    events: list[str] = []
    admin_errors: list[str] = []
    stop = threading.Event()

    def restart_master() -> None:
        time.sleep(3.0)
        cluster.start_master()
        cluster.wait_storage_mounted(60.0)
        events.append(f"{time.strftime('%X')} master restarted")

    def cycle_attach() -> None:
        while not stop.wait(30.0):
            node.detach()
            events.append(f"{time.strftime('%X')} detach")
            while not stop.wait(1.0):  # as an operator would: attach again until it is accepted
                try:
                    node.attach("mooncake", extra)
                    events.append(f"{time.strftime('%X')} attach")
                    break
                except ControllerError as exc:  # e.g. the master is down
                    admin_errors.append(str(exc)[:200])

    def store_full() -> str:
        switch.refuse_all = True
        return "store full"

    def store_free() -> str:
        switch.refuse_all = False
        return "store has room"

    def kill_master() -> str:
        cluster.kill("master")
        events.append(f"{time.strftime('%X')} master killed")
        threading.Thread(target=restart_master, name="soak-restart", daemon=True).start()
        return "master killed"

    actions = {int(n * 0.25): store_full, int(n * 0.35): store_free, int(n * 0.4): kill_master} if faults else {}
    if restart_only:
        actions = {int(n * 0.4): kill_master}
    cycler = threading.Thread(target=cycle_attach, name="soak-cycler", daemon=True)
    if faults:
        cycler.start()
    sampler = Sampler()
    sampler.start()
    t0 = time.monotonic()
    try:
        # Paced by the trace's own timestamps (x speed): phases last the same wall time in both
        # runs, however fast a degraded (L2-only) node answers.
        result = replay(LocalTarget(node, owns=False), requests, concurrency=4, actions=actions,  # type: ignore[arg-type]
                        speed=speed, max_gap_s=2.0, progress=True, description="faulted" if faults else "fault-free")
    finally:
        stop.set()
        sampler.stop()
        switch.refuse_all = False
    wall = time.monotonic() - t0
    node.wait_backups(30)
    status = node.status()
    clients = {k: v - clients_before[k] for k, v in _mooncake_clients().items()}
    node.close()
    # Every backend built in the run (attach, probe) must be gone once the node is closed: one
    # still alive keeps its client (for Mooncake: its threads' memory) for good.
    gc.collect()
    alive = sum(isinstance(o, HiCacheStorage) for o in gc.get_objects())
    summary = result.summary()
    samples = sampler.samples
    warm = samples[max(0, len(samples) // 10)] if samples else (0.0, *proc_status())
    end = samples[-1] if samples else warm
    trips = sum(r["storage"]["breaker"]["trips"] for r in status["ranks"])
    refused = sum(r["storage"]["counters"]["refused_pages"] for r in status["ranks"])
    resync = sum(r["counters"]["resync_pages"] for r in status["ranks"])
    ctl = [r["storage"] for r in status["ranks"]]
    # Every attach, refused attach and breaker probe builds a fresh backend instance (a new
    # Mooncake client): the unit RSS growth is measured against.
    instances = sum(c["counters"]["attaches"] + c["counters"]["attach_failures"] + c["breaker"]["probes"] for c in ctl)
    return {
        "faults": faults, "requests": summary["requests"], "failed": summary["failed_requests"],
        "verify_errors": summary["verify_errors"] + int(status["totals"]["verify_errors"]),
        "hit_ratio": summary["token_hit_ratio"], "l3_ratio": summary["tier_hit_ratio"]["storage"],
        "l3_after_recovery": l3_ratio(result, int(n * 0.75)), "breaker_trips": trips, "refused_pages": refused,
        "resync_pages": resync, "instances": instances, "clients": clients, "backends_alive_after_close": alive, "rss_warm_mib": warm[1] / 2**20, "rss_end_mib": end[1] / 2**20,
        "rss_max_mib": max((s[1] for s in samples), default=0) / 2**20, "threads_warm": warm[2],
        "threads_end": end[2], "threads_max": max((s[2] for s in samples), default=0), "wall_s": wall,
        "events": events, "admin_errors": admin_errors, "errors": summary["errors"],
        "routed": [r["routed"] for r in status["routing"]["ranks"]],
        "backend_errors": [
            {k: v for k, v in ((r["storage"].get("backend_stats") or {}).get("errors") or {}).items() if v}
            for r in status["ranks"]
        ],
    }


def verdicts(ref: dict[str, Any], hot: dict[str, Any], restart: dict[str, Any]) -> list[tuple[str, bool, str]]:
    # A master restart empties Mooncake (it keeps objects in memory): what was stored before it
    # is gone in any run, faults or not. The faults' own cost is measured against a run with
    # that restart and nothing else; the fault-free run's figure is shown beside it.
    base = restart["l3_after_recovery"]
    rel = abs(hot["l3_after_recovery"] - base) / base if base else 0.0
    return [
        ("zero failed requests", hot["failed"] == 0 and ref["failed"] == 0, f"{hot['failed']} / {ref['failed']}"),
        ("zero wrong bytes", hot["verify_errors"] == 0 and ref["verify_errors"] == 0,
         f"{hot['verify_errors']} / {ref['verify_errors']} verify errors"),
        ("L3 hit ratio after recovery within 10 % of the restart-only run", rel <= 0.10,
         f"{hot['l3_after_recovery']:.2%} vs {base:.2%} ({rel:.1%} apart; fault-free, no restart: "
         f"{ref['l3_after_recovery']:.2%})"),
        ("RSS flat", hot["rss_end_mib"] <= hot["rss_warm_mib"] * 1.25,
         f"{hot['rss_warm_mib']:.0f} -> {hot['rss_end_mib']:.0f} MiB (max {hot['rss_max_mib']:.0f})"),
        ("threads flat", hot["threads_end"] <= hot["threads_warm"] + 8,
         f"{hot['threads_warm']} -> {hot['threads_end']} (max {hot['threads_max']})"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--trace", default=str(TRACE))
    p.add_argument("--speed", type=float, default=8.0, help="trace time / wall time (default 8)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from hicache_mooncake.cluster import LocalMooncakeCluster

    console = Console(stderr=True)
    requests = load_trace(args.trace, args.requests)
    with LocalMooncakeCluster(storage_nodes=1, segment_size="1GB", client_ttl_s=3) as cluster:
        ref = run(cluster, requests, False, console, args.speed)
    with LocalMooncakeCluster(storage_nodes=1, segment_size="1GB", client_ttl_s=3) as cluster:
        restart = run(cluster, requests, False, console, args.speed, restart_only=True)
    with LocalMooncakeCluster(storage_nodes=1, segment_size="1GB", client_ttl_s=3) as cluster:
        hot = run(cluster, requests, True, console, args.speed)
    table = Table(title=f"hicache soak: {len(requests):,} requests of {Path(args.trace).name}, --dp-size 2, mooncake",
                  box=box.SIMPLE_HEAD)
    table.add_column("figure", no_wrap=True)
    for col in ("fault-free", "restart only", "faulted"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = [
        ("requests / failed", lambda r: f"{r['requests']:,} / {r['failed']}"),
        ("verify errors (wrong bytes)", lambda r: str(r["verify_errors"])),
        ("token hit ratio (all tiers)", lambda r: f"{r['hit_ratio']:.2%}"),
        ("L3 hit ratio (whole run)", lambda r: f"{r['l3_ratio']:.2%}"),
        ("L3 hit ratio, last 25 % (recovered)", lambda r: f"{r['l3_after_recovery']:.2%}"),
        ("breaker trips", lambda r: str(r["breaker_trips"])),
        ("pages refused (store full)", lambda r: f"{r['refused_pages']:,}"),
        ("pages backed up again (re-sync)", lambda r: f"{r['resync_pages']:,}"),
        ("requests per rank", lambda r: "/".join(str(x) for x in r["routed"])),
        ("backend instances built (attach, probe)", lambda r: str(r["instances"])),
        ("Mooncake clients set up / reused", lambda r: f"{r['clients']['opened']} / {r['clients']['reused']}"),
        ("backends still alive after node.close()", lambda r: str(r["backends_alive_after_close"])),
        ("RSS warm-up -> end (MiB)", lambda r: f"{r['rss_warm_mib']:.0f}->{r['rss_end_mib']:.0f}"),
        ("threads warm-up -> end", lambda r: f"{r['threads_warm']}->{r['threads_end']}"),
        ("wall time", lambda r: f"{r['wall_s']:.0f} s"),
    ]
    for name, fmt in rows:
        table.add_row(name, fmt(ref), fmt(restart), fmt(hot))
    out = Console(width=100)
    out.print(table)
    checks = verdicts(ref, hot, restart)
    for name, ok, detail in checks:
        out.print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    out.print(f"events: {'; '.join(hot['events'])}")
    out.print(f"backend error codes at the end (per rank): {hot['backend_errors']}")
    if hot["admin_errors"]:
        out.print(f"admin steps refused (retried next cycle): {len(hot['admin_errors'])}: {hot['admin_errors'][0]}")
    if args.json:
        print(json.dumps({"fault_free": ref, "restart_only": restart, "faulted": hot, "checks": checks}))
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
