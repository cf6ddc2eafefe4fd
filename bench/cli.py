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
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"bench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("BENCH_TRACEBACK"):
            raise
        print(f"bench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
