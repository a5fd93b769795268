"""Showing a replay: rich tables for people, JSON for scripts, a PNG of hit ratio over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hicache_core.replay.runner import TIERS, ReplayResult


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


def summary_table(summary: dict[str, Any], title: str = "hicache replay") -> Table:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    ref = summary.get("trace_reference") or {}
    rows: list[tuple[str, str]] = [
        ("requests", f"{summary['requests']:,}"),
        ("failed requests", f"{summary['failed_requests']:,}"),
        ("input tokens", f"{summary['input_tokens']:,}"),
    ]
    for tier in TIERS:
        rows.append((f"hit tokens: {tier}", f"{summary['hit_tokens'][tier]:,}  ({summary['tier_hit_ratio'][tier]:.1%})"))
    rows.append(("token hit ratio (all tiers)", f"{summary['token_hit_ratio']:.2%}"))
    if ref:
        rows.append(("trace's own prefix reuse (infinite cache)", f"{ref['token_hit_ratio']:.2%}"))
    rows += [
        ("verification errors", f"{summary['verify_errors']}"),
        ("bytes loaded (L2->L1, L3->L2)", _gib(summary["bytes_loaded"])),
        ("bytes stored (L2->L3)", _gib(summary["bytes_stored"])),
        ("wall time", f"{summary['wall_seconds']:.2f} s"),
        ("requests / s", f"{summary['requests_per_second']:.1f}"),
        ("mean latency", f"{summary['mean_latency_ms']:.2f} ms"),
    ]
    for name, value in rows:
        style = "red" if (name in ("failed requests", "verification errors") and value not in ("0",)) else ""
        table.add_row(name, f"[{style}]{value}[/]" if style else value)
    return table


def phase_table(summary: dict[str, Any], title: str = "phases") -> Table:
    table = Table(title=title)
    for col in ("phase", "reqs", "failed", "device", "host", "storage", "hit", "verify err"):
        table.add_column(col, justify="left" if col == "phase" else "right", no_wrap=col == "phase")
    for p in summary.get("phases", []):
        tokens = p["input_tokens"] or 1
        table.add_row(
            p["phase"], str(p["requests"]), str(p["failed_requests"]),
            *(f"{p['hit_tokens'][t] / tokens:.1%}" for t in TIERS),
            f"{p['token_hit_ratio']:.1%}", str(p["verify_errors"]),
        )
    return table


def print_report(result: ReplayResult, console: Console | None = None, title: str = "hicache replay") -> dict[str, Any]:
    console = console or Console()
    summary = result.summary()
    console.print(summary_table(summary, title))
    if len(summary.get("phases", [])) > 1:
        console.print(phase_table(summary))
    return summary


def write_plot(result: ReplayResult, path: str | Path, window: int = 50, title: str = "") -> Path:
    """Hit ratio per tier over the trace's time (rolling window of ``window`` requests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted((r for r in result.records if r.ok), key=lambda r: r.index)
    out = Path(path)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if recs:
        t0 = recs[0].timestamp_ms
        xs, series = [], {t: [] for t in TIERS}  # type: ignore[var-annotated]
        for i in range(len(recs)):
            win = recs[max(0, i - window + 1) : i + 1]
            tokens = sum(r.input_tokens for r in win) or 1
            xs.append((recs[i].timestamp_ms - t0) / 1000.0)
            for t in TIERS:
                series[t].append(sum(r.cached[t] for r in win) / tokens)
        ax.stackplot(xs, *(series[t] for t in TIERS), labels=[f"{t} (L{n})" for n, t in enumerate(TIERS, 1)],
                     alpha=0.8)
        for ev in result.events:
            pos = ev.get("before_request")
            if isinstance(pos, int) and pos < len(recs):
                ax.axvline((recs[pos].timestamp_ms - t0) / 1000.0, color="black", ls="--", lw=0.8)
                ax.text((recs[pos].timestamp_ms - t0) / 1000.0, 0.98, f" {ev.get('phase', '')}",
                        rotation=90, va="top", fontsize=7, transform=ax.get_xaxis_transform())
        ref = result.reference.get("token_hit_ratio")
        if ref is not None:
            ax.axhline(ref, color="grey", ls=":", lw=1, label=f"trace prefix reuse {ref:.1%}")
    ax.set_xlabel("trace time (s)")
    ax.set_ylabel(f"token hit ratio (last {window} requests)")
    top = max([sum(v) for v in zip(*series.values())] if recs else [0.0]) if recs else 0.0
    ref_line = result.reference.get("token_hit_ratio") or 0.0
    ax.set_ylim(0, min(1.0, max(top, ref_line) * 1.3 + 0.05))
    ax.set_title(title or "hicache replay: hit ratio per tier")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
