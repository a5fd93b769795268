"""Entry point of the ``hicache`` console script.

Subcommands are modules of this package that define ``register(subparsers)`` and ``COMMANDS``
(name -> one-line help). Only the command being run gets its full parser (building some, such
as ``serve``'s node flags, imports torch); the others are listed from ``COMMANDS``, so
``hicache --help``, ``hicache backends`` and ``hicache storage status`` start without torch.
Heavy imports happen inside the command's handler.
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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``hicache`` parser; with ``argv``, only the command named there is built in full
    (without, every command is, as before)."""
    parser = argparse.ArgumentParser(
        prog="hicache", description="hicache: the L3 tier of LLM KV caches, as plugins."
    )
    parser.add_argument("--version", action="version", version=f"hicache-core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_in(argv) if argv is not None else None
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hicache_core.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hicache_core.cli.{name}":
                continue
            raise
        commands: dict[str, str] | None = getattr(module, "COMMANDS", None)
        if argv is None or commands is None or chosen in commands:
            module.register(sub)
        else:
            for command, help_text in commands.items():
                sub.add_parser(command, help=help_text)  # listed only; never parsed
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The first word of ``argv`` that is not an option (the command), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
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
