"""`bench sample <run-dir> --seeds 0-999 --out samples.npz`: per-image-seeded samples in ADM npz format."""
from __future__ import annotations

import argparse

from bench.commands import add_trust_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate samples from a trained run (EMA weights)",
                       description="Writes uint8 NHWC images as `arr_0` (ADM evaluator format), labels as "
                                   "`arr_1`, the seeds, and a PNG grid beside the npz.")
    p.add_argument("run_dir")
    p.add_argument("--seeds", default=None, help="seed list/range, e.g. 0-999 (default: 0..n-1)")
    p.add_argument("--n", type=int, default=None, help="number of images (seeds 0..n-1) if --seeds is not given")
    p.add_argument("--out", default=None, help="output npz (default: <run-dir>/samples/samples.npz)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the method's)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--device", default="auto")
    add_trust_checkpoint(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.checkpoint import trust_checkpoints
    from bench.method import ConfigError
    from bench.sample import parse_seeds, sample_to_npz

    if args.seeds is None and args.n is None:
        raise ConfigError("give --seeds (e.g. 0-999) or --n")
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(args.n))
    if args.n is not None and args.seeds:
        seeds = seeds[: args.n]
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples" / "samples.npz"
    with trust_checkpoints(args.trust_checkpoint):
        sample_to_npz(args.run_dir, seeds, out, batch=args.batch, steps=args.steps, guidance=args.guidance,
                      device=args.device, progress=True)
    print(f"wrote {len(seeds)} samples to {out} (grid {out.with_suffix('.png')})")
    return 0
