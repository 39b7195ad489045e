"""``matryoshka-st``: one subcommand per module in this package, each exposing ``add_parser(subparsers)`` and
``run(args) -> int``. ``main`` only dispatches, and is the one error path of every command: a known error (bad
input, a missing or unreadable file, no network) becomes one line on stderr and exit status 2; Ctrl-C becomes one
line saying what was kept and how to go on (a module's optional ``interrupted(args) -> str``) and status 130.
Set ``MATRYOSHKA_ST_TRACEBACK=1`` to get the full traceback instead."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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


def describe_error(error: BaseException) -> str | None:
    """One line for an error the user can fix (bad input, missing file, no network); ``None`` for a bug."""
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        OfflineModeIsEnabled = ()  # noqa: N806
    if isinstance(error, OfflineModeIsEnabled):
        return (
            f"no network: {str(error).rstrip('.')}. Unset HF_HUB_OFFLINE and check the connection, or use --dry-run."
        )
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({error}): save it as UTF-8."
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such file or folder: {str(error.filename)!r}."
    if isinstance(error, PermissionError) and error.filename:
        return f"permission denied: {str(error.filename)!r}."
    if isinstance(error, (ValueError, OSError)):
        return " ".join(str(error).split()) or type(error).__name__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    prog = f"matryoshka-st {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("MATRYOSHKA_ST_TRACEBACK"):
            raise
        module = sys.modules.get(args.func.__module__)
        hint = getattr(module, "interrupted", None)
        print(f"\n{prog}: interrupted. {hint(args) if hint else 'Nothing was finished.'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        message = describe_error(error)
        if message is None or os.environ.get("MATRYOSHKA_ST_TRACEBACK"):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
