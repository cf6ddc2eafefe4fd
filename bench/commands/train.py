"""`bench train <config.yaml> [key=value ...]`: train (or resume) one run into a run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands import add_trust_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or resume a run from a config file",
                       description="Train a method from a run config (YAML). Fields can be overridden as "
                                   "key=value or --key=value, e.g. train.batch=64 method_config.dropout=0.1. "
                                   "Running the same command again resumes from the latest checkpoint.")
    p.add_argument("config", help="run config YAML (method, preset, data, train, seed)")
    p.add_argument("--run-dir", default=None, help="output folder (default: results/runs/<config name>)")
    p.add_argument("--stop-after", type=int, default=None, metavar="IMAGES",
                   help="checkpoint and stop once this many training images are seen (a time slice)")
    add_trust_checkpoint(p)
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from bench.checkpoint import trust_checkpoints
    from bench.config import load_run_config
    from bench.train import train

    cfg = load_run_config(args.config, [o.lstrip("-") for o in args.overrides])
    run_dir = Path(args.run_dir) if args.run_dir else Path("results/runs") / Path(args.config).stem
    with trust_checkpoints(args.trust_checkpoint):          # resuming reads the run's latest checkpoint
        out = train(cfg, run_dir, stop_after_images=args.stop_after)
    print(f"{'done' if out['done'] else 'stopped'}: {out['images']} images, {out['flops']:.3e} FLOPs, "
          f"stage {out['stage']} -> {run_dir}")
    return 0
