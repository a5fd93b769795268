"""``hicache demo``: the quick start. Starts a node (file backend in a temp dir) as a child
process, replays the bundled trace sample while detaching, re-attaching and switching L3
over the admin API, prints the tables, writes a plot, and exits 0 only when no request failed,
no page failed verification, L3 gave no hits while detached and gave hits again after."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from hicache_core.node.server import NodeProcess
from hicache_core.replay.report import print_report, write_plot
from hicache_core.replay.scenario import BackendChoice, switch_scenario
from hicache_core.replay.trace import load_trace, sample_trace_path

#: L1 holds the sample's largest request (128 Ki tokens) but only ~1 % of its distinct pages,
#: so most reuse has to come back from L2 and L3.
DEMO_NODE_FLAGS = ("--page-size", "128", "--device-capacity-tokens", "131072", "--hicache-ratio", "4",
                   "--hicache-storage-prefetch-policy", "wait_complete")


def check_scenario(summary: dict[str, object]) -> list[str]:
    """What went wrong in a scenario run (empty when it passed)."""
    problems: list[str] = []
    if summary["failed_requests"]:
        problems.append(f"{summary['failed_requests']} request(s) failed")
    if summary["verify_errors"] or summary.get("node_verify_errors"):
        problems.append(f"{summary['verify_errors']} verification error(s)")
    phases = {str(p["phase"]): p for p in summary["phases"]}  # type: ignore[attr-defined]
    detached = phases.get("detached")
    if detached is None:
        problems.append("no requests ran while detached")
    elif detached["hit_tokens"]["storage"]:
        problems.append(f"{detached['hit_tokens']['storage']} storage hit tokens while detached")
    again = [p for name, p in phases.items() if name.startswith("re-attached")]
    if not again or not again[0]["hit_tokens"]["storage"]:
        problems.append("no storage hits after re-attaching")
    for event in summary["events"]:  # type: ignore[attr-defined]
        if not event["ok"]:
            problems.append(f"admin step failed: {event.get('error')}")
    return problems


def run_demo(workdir: str | None = None, limit: int | None = None, plot: str | None = None,
             as_json: bool = False, concurrency: int = 4) -> int:
    console = Console()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hicache-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    first = BackendChoice("file", {"path": str(root / "l3-a")}, "file-a")
    second = BackendChoice("file", {"path": str(root / "l3-b")}, "file-b")
    requests = load_trace(sample_trace_path(), limit)
    console.print(Panel.fit(
        f"hicache demo: {len(requests)} requests of the Mooncake conversation trace (bundled sample)\n"
        f"node: tiny model (16 B/token), L1 131,072 tokens, L2 524,288 tokens, L3 = file backend under {root}\n"
        "while the replay runs: detach L3 at 40 %, attach it again at 60 %, switch to a second file store at 80 %",
        title="hicache quick start"))
    node = NodeProcess(
        ["--admin-api-key", key, *DEMO_NODE_FLAGS, "--hicache-storage-backend", first.name,
         "--hicache-storage-backend-extra-config", json.dumps(first.extra_config)],
        log_path=root / "node.log",
    )
    try:
        node.start()
    except RuntimeError as exc:
        console.print(f"[red]could not start the node: {exc}[/]")
        return 1
    try:
        console.print(f"node up at {node.url} (pid {node.proc.pid if node.proc else '?'}; log {root / 'node.log'})")
        result = switch_scenario(node.url, key, requests, first, second, concurrency=concurrency)
    finally:
        node.stop()
        if not workdir:
            # A temp dir of our own: the L3 page files (~280 MB a run) go; the log and the plot stay.
            for choice in (first, second):
                shutil.rmtree(choice.extra_config["path"], ignore_errors=True)
    summary = print_report(result, console, title="hicache demo: replay of the bundled sample")
    plot_path = write_plot(result, plot or root / "hicache_demo.png",
                           title="hicache demo: hit ratio per tier (detach / attach / switch marked)")
    console.print(f"plot: {plot_path}" + ("" if workdir else "  (L3 files removed; --workdir DIR keeps them)"))
    if as_json:
        print(json.dumps(summary))
    problems = check_scenario(summary)
    if problems:
        console.print("[red]demo FAILED: " + "; ".join(problems) + "[/]")
        return 1
    console.print("[green]demo passed: no failed request, no verification error, L3 hits stopped while "
                  "detached and came back after re-attaching[/]")
    return 0
