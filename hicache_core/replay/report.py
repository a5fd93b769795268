"""Showing a replay: rich tables for people, JSON for scripts, a PNG of hit ratio over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from hicache_core.replay.runner import TIERS, ReplayResult


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


def summary_table(summary: dict[str, Any], title: str = "hicache replay") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True, min_width=24)
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
    # No vertical rules and no wrapping: the table fits an 80-column terminal whole ("stora…" did not).
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("phase", no_wrap=True, max_width=20)  # the only column that may be shortened
    for col in ("reqs", "failed", "device", "host", "storage", "hit", "verify err"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
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


def rolling_series(recs: list[Any], window: int) -> tuple[list[float], dict[str, list[float]]]:
    """x (trace seconds) and per-tier hit ratio over the last ``window`` requests *of the same phase*.

    The window restarts at every phase boundary, so a phase's curve never shows hits from
    before it began (e.g. L3 hits from before a detach, drawn after the detach line).
    """
    xs: list[float] = []
    series: dict[str, list[float]] = {t: [] for t in TIERS}
    if not recs:
        return xs, series
    t0 = recs[0].timestamp_ms
    start = 0
    for i, rec in enumerate(recs):
        if i and rec.phase != recs[i - 1].phase:
            start = i
        win = recs[max(start, i - window + 1) : i + 1]
        tokens = sum(r.input_tokens for r in win) or 1
        xs.append((rec.timestamp_ms - t0) / 1000.0)
        for t in TIERS:
            series[t].append(sum(r.cached[t] for r in win) / tokens)
    return xs, series


def write_plot(result: ReplayResult, path: str | Path, window: int = 50, title: str = "") -> Path:
    """Hit ratio per tier over the trace's time (rolling window of ``window`` requests per phase)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted((r for r in result.records if r.ok), key=lambda r: r.index)
    out = Path(path)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs, series = rolling_series(recs, window)
    labels = [f"{t} (L{n})" for n, t in enumerate(TIERS, 1)]
    if len(set(xs)) >= 2:
        ax.stackplot(xs, *(series[t] for t in TIERS), labels=labels, alpha=0.8)
        ax.set_xlabel("trace time (s)")
    elif recs:
        # One request (or all at one instant): a stacked bar, not an empty area plot.
        bottom = 0.0
        for t, label in zip(TIERS, labels):
            value = series[t][-1]
            ax.bar([0], [value], bottom=[bottom], width=0.5, label=label, alpha=0.8)
            bottom += value
        ax.set_xticks([0], [f"{len(recs)} request(s)"])
        ax.set_xlim(-1, 1)
    if recs:
        t0 = recs[0].timestamp_ms
        for ev in result.events:
            pos = ev.get("before_request")
            if isinstance(pos, int) and pos < len(recs) and len(set(xs)) >= 2:
                x = (recs[pos].timestamp_ms - t0) / 1000.0
                ax.axvline(x, color="black", ls="--", lw=0.8)
                ax.text(x, 0.98, f" {ev.get('phase', '')}", rotation=90, va="top", fontsize=7,
                        transform=ax.get_xaxis_transform())
        ref = result.reference.get("token_hit_ratio")
        if ref is not None:
            ax.axhline(ref, color="grey", ls=":", lw=1, label=f"trace prefix reuse {ref:.1%}")
    ax.set_ylabel(f"token hit ratio (last {window} requests of the phase)")
    top = max((sum(v) for v in zip(*series.values())), default=0.0)
    ref_line = result.reference.get("token_hit_ratio") or 0.0
    ax.set_ylim(0, min(1.0, max(top, ref_line) * 1.3 + 0.05))
    ax.set_title(title or "hicache replay: hit ratio per tier")
    if recs:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
