"""``hicache backends``: what is installed, what can run here, and how to get the rest."""

from __future__ import annotations

import argparse
import json
from typing import Any

#: The subcommands this module registers and their one-line help (``hicache --help`` lists
#: them without building their parsers).
COMMANDS: dict[str, str] = {
    "backends": "list storage backends: installed, available, and how to install the rest",
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "backends", help=COMMANDS["backends"]
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--deep", action="store_true",
        help="also import each available backend's class to confirm it loads (may be slow)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from hicache_core.plugins.registry import default_registry

    # The table skips importing class-form backends (their module usually imports torch: seconds);
    # --deep and --json (complete data for scripts) load them for their capabilities.
    loaded = args.deep or args.json
    rows = default_registry().describe(deep=args.deep, load_classes=loaded)
    if args.json:
        out = [r.to_dict() for r in rows]
        if args.deep:
            # The config schema lives on the backend class (config_model): only --deep imports it.
            from hicache_core.controller.backend_models import config_schema

            registry = default_registry()
            for row in out:
                if row["status"] == "available":
                    try:
                        row["config_schema"] = config_schema(
                            row["name"], registry.load_class(row["name"]), registry.spec(row["name"]).config_options
                        )
                    except Exception as exc:  # a listing never fails on one backend
                        row["config_schema_error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Names, versions and statuses never wrap (at 80 columns they did); long text folds. A
    # narrow terminal drops the distribution column (--json has it) to leave the text room.
    wide = console.width >= 110
    table = Table(title="hicache storage backends")
    for col in ("name", "distribution", "version", "status") if wide else ("name", "version", "status"):
        table.add_column(col, no_wrap=True)
    table.add_column("capabilities", overflow="fold", min_width=20)
    table.add_column("reason / install hint", overflow="fold", min_width=14)
    style = {"available": "green", "unavailable": "red", "not installed": "yellow"}
    for r in rows:
        note = r.reason or ("" if r.status == "available" else r.install_hint)
        caps = ", ".join(r.capabilities) if loaded or r.source != "class" else "[dim](--deep to load)[/]"
        first = (r.name, r.distribution or "") if wide else (r.name,)
        table.add_row(*first, r.version or "", f"[{style[r.status]}]{r.status}[/]", caps, note)
    console.print(table)
    return 0
