"""Subcommands of `bench` (one module each; see bench/cli.py)."""
from __future__ import annotations

import argparse


def add_trust_checkpoint(p: argparse.ArgumentParser) -> None:
    """The one flag that lets a command read a checkpoint with full pickle (bench.checkpoint)."""
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="read checkpoints with full pickle instead of weights only: a crafted checkpoint can then "
                        "run arbitrary code while it loads. Only for a checkpoint from a source you trust that "
                        "the default loader refuses")
