"""Entry point of the ``hicache`` console script.

Subcommands are modules of this package that define ``register(subparsers)``; the module is
imported only to add its parser, and heavy imports happen inside the command's handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hicache_core.version import __version__

#: Subcommand modules in help order. A module that is absent is skipped.
COMMAND_MODULES: tuple[str, ...] = ("backends", "check", "serve", "storage", "replay", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hicache", description="hicache: the L3 tier of LLM KV caches, as plugins."
    )
    parser.add_argument("--version", action="version", version=f"hicache-core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hicache_core.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hicache_core.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result = handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
