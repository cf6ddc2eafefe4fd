"""`bench` command line. Each subcommand lives in bench/commands/<name>.py and exposes
``register(subparsers)`` which adds its parser and sets ``func`` (called with the parsed args).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    import bench.commands as commands

    parser = argparse.ArgumentParser(prog="bench", description="pixel-space diffusion benchmark harness")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message "
                             "(also: BENCH_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"bench.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.method import ConfigError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    debug = bool(args.debug or os.environ.get("BENCH_TRACEBACK"))
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        if debug:
            raise
        print(f"bench {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user's input causes (a config field, a file, an image, an asset): one line, exit 2.
    Anything else is a bug and keeps its traceback."""
    from bench.data.preprocess import CorruptImage
    from bench.method import ConfigError

    return (ConfigError, CorruptImage, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (file errors name their file)."""
    from bench.data.preprocess import CorruptImage

    if isinstance(err, CorruptImage):
        return f"unreadable image {err}"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split()) or type(err).__name__
    return text

if __name__ == "__main__":
    sys.exit(main())
