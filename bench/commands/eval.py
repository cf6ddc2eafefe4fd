"""`bench eval <run-dir | samples.npz | image-folder> --ref ref.npz --metrics fid,sfid,is,pr,kid,clip`."""
from __future__ import annotations

import argparse
import json

from bench.commands import add_trust_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate samples (FID, sFID, IS, P/R, KID, CLIP score, FD-DINOv2)",
                       description="Streams images through the extractors and writes metrics.json with every "
                                   "setting. A run folder is evaluated from samples/*.npz, or with --seeds from "
                                   "the sampler directly (no images written).")
    p.add_argument("target", help="run folder, samples .npz (arr_0 uint8 NHWC) or image folder")
    p.add_argument("--ref", default=None, help="reference npz (ADM format or `bench stats` output)")
    p.add_argument("--metrics", default="fid,sfid,is,pr", help="comma list of fid,sfid,is,pr,kid,clip,fd_dinov2")
    p.add_argument("--extractor", default="inception", help="inception | trained:<name>")
    p.add_argument("--assets", default=None, help="asset folder (default $BENCH_ASSETS or ./assets)")
    p.add_argument("--out", default=None, help="metrics.json path (default beside the target)")
    p.add_argument("--seeds", default=None, help="run folders: sample these seeds on the fly, e.g. 0-49999")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--clip-model", default="ViT-L-14-quickgelu")
    p.add_argument("--clip-pretrained", default="openai")
    p.add_argument("--clip-scale", type=float, default=100.0)
    p.add_argument("--clip-clamp", default="per_sample", choices=["per_sample", "mean", "none"])
    p.add_argument("--clip-prefix", default="")
    p.add_argument("--dinov2", default="dinov2", help="dinov2[:<timm-name>] for fd_dinov2")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--no-progress", action="store_true")
    add_trust_checkpoint(p)   # --seeds on a run folder samples from its checkpoint
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.checkpoint import trust_checkpoints
    from bench.method import validate_model
    from bench.metrics.api import evaluate
    from bench.metrics.assets import AssetFolder
    from bench.metrics.evaluate import EvalSettings
    from bench.metrics.sources import parse_seeds

    settings = validate_model(EvalSettings, {
        "metrics": [m.strip() for m in args.metrics.split(",") if m.strip()], "extractor": args.extractor,
        "batch": args.batch, "device": args.device, "dinov2": args.dinov2, "kid_subset_size": args.kid_subset_size,
        "clip": {"model": args.clip_model, "pretrained": args.clip_pretrained, "scale": args.clip_scale,
                 "clamp": args.clip_clamp, "prefix": args.clip_prefix}}).checked()
    with trust_checkpoints(args.trust_checkpoint):
        result = evaluate(args.target, settings, AssetFolder(args.assets), args.ref, args.out,
                          seeds=parse_seeds(args.seeds) if args.seeds else None, steps=args.steps,
                          guidance=args.guidance, limit=args.limit, progress=not args.no_progress)
    print(json.dumps(result["metrics"], indent=2))
    print(f"wrote {result['written_to']}")
    return 0
