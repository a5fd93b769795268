"""``hicache check NAME``: run the conformance kit against an installed or dynamic backend.

The kit runs in this process through ``hicache_core.testing.runner.run_kit`` (``pytest.main``
over ``hicache_core.testing.check_suite`` with an empty pytest configuration of its own, so the
current directory's settings and conftest files do not leak in); the result is a table of every
test, each failure's first words naming the broken property, and an exit status of 0 only when
nothing failed.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_CONFORMS = 0
EXIT_FAILED = 1
EXIT_CANNOT_START = 2


#: The subcommands this module registers and their one-line help (``hicache --help`` lists
#: them without building their parsers).
COMMANDS: dict[str, str] = {
    "check": "run the storage conformance kit against a backend; exit 0 only when it conforms",
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help=COMMANDS["check"],
        description=(
            "Run hicache's storage conformance kit against the backend NAME (installed, or "
            "'dynamic' with module_path/class_name in --config). The kit writes pages under the "
            "model name 'hicache-check' and calls clear() and delete(): point it at a scratch "
            "store, or leave those tests out with -k 'not clear and not delete'."
        ),
    )
    p.add_argument("name", help="backend name, as 'hicache backends' lists it, or 'dynamic'")
    p.add_argument(
        "--config", default=None,
        help="the backend's extra config: a JSON object, or @FILE to read it from a file",
    )
    p.add_argument("-k", dest="keyword", default=None, help="only run tests matching this pytest -k expression")
    p.add_argument("--pytest-verbose", action="store_true", help="show pytest's own per-test output")
    p.set_defaults(handler=run)


def _preflight(name: str, extra: dict[str, Any]) -> str | None:
    """Create and close the backend once; the reason it cannot start, or None."""
    from hicache_core.plugins.factory import create_backend
    from hicache_core.spec.config import HiCacheStorageConfig
    from hicache_core.spec.errors import HiCacheError
    from hicache_core.testing.runner import CHECK_MODEL_NAME

    try:
        backend = create_backend(name, HiCacheStorageConfig(model_name=CHECK_MODEL_NAME, extra_config=dict(extra)))
    except HiCacheError as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        backend.close()
    except Exception:
        pass
    return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from hicache_core.testing import check_suite

    console = Console()
    try:
        extra = check_suite.parse_config(args.config)
    except (OSError, ValueError) as exc:
        console.print(f"[red]--config: {exc}[/]; give a JSON object such as '{{\"path\": \"/tmp/l3\"}}' or @config.json")
        return EXIT_CANNOT_START
    reason = _preflight(args.name, extra)
    if reason is not None:
        console.print(f"[red]backend {args.name!r} cannot start:[/] {reason}")
        return EXIT_CANNOT_START

    from hicache_core.testing.runner import KitTarget, run_kit

    report = run_kit(KitTarget.installed(args.name, extra), keyword=args.keyword, verbose=args.pytest_verbose)
    code = report.exit_code
    results = report.outcomes
    table = Table(title=f"hicache check {args.name}")
    table.add_column("test", overflow="fold")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("detail", overflow="fold")
    style = {"passed": "green", "skipped": "yellow", "failed": "red", "error": "red"}
    for r in results:
        table.add_row(escape(r.test), f"[{style[r.outcome]}]{r.outcome}[/]", f"{r.duration:.2f}", escape(r.detail))
    console.print(table)
    counts = {k: sum(1 for r in results if r.outcome == k) for k in style}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    bad = counts["failed"] + counts["error"]
    if not results or counts["passed"] == 0:
        console.print(f"[red]{args.name}: no conformance test ran (pytest exit {int(code)})[/]")
        return EXIT_FAILED
    if bad or int(code) not in (0,):
        console.print(f"[red]{args.name} does not conform:[/] {summary}")
        return EXIT_FAILED
    console.print(f"[green]{args.name} conforms:[/] {summary}")
    return EXIT_CONFORMS
