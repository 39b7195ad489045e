"""``matryoshka-st``: one subcommand per module in this package, each exposing ``add_parser(subparsers)`` and
``run(args) -> int``. ``main`` only dispatches; the work is done by library functions the modules call."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys


def _subcommand_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "matryoshka-st",
        description="Fine-tune, evaluate, search with and publish Matryoshka sentence-embedding models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _subcommand_modules():
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
