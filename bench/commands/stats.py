"""`bench stats <dataset> --out ref.npz`: reference statistics in the ADM npz format from any dataset."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="reference statistics (ADM npz: mu, sigma, mu_s, sigma_s, arr_0) of a dataset",
                       description="DATASET is a reader kind (synthetic, folder, zip, imagenet, celebahq, coco, ...) "
                                   "or a YAML file with a data spec. COCO FID-30K: --fid30k.")
    p.add_argument("dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--max-items", type=int, default=None)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="reader option (repeatable)")
    p.add_argument("--extractor", default="inception", help="inception | trained:<name>")
    p.add_argument("--dinov2", default=None, help="also store FD-DINOv2 stats: dinov2[:<timm-name>]")
    p.add_argument("--pr-images", type=int, default=10_000, help="images kept as arr_0 for precision/recall")
    p.add_argument("--seed", type=int, default=0, help="seed of the arr_0 subset (and of the FID-30K subset)")
    p.add_argument("--cmmd", action="store_true", help="also store CLIP image embeddings for CMMD")
    p.add_argument("--cmmd-model", default="ViT-L-14-336-quickgelu", help="open_clip model of the CMMD embeddings")
    p.add_argument("--cmmd-pretrained", default="openai")
    p.add_argument("--fid30k", action="store_true", help="COCO FID-30K: 30k val2014 images, one caption each")
    p.add_argument("--assets", default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def dataset_spec(args: argparse.Namespace):
    from pathlib import Path

    from bench.data.spec import DatasetSpec
    from bench.method import ConfigError, validate_model
    from bench.safeload import load_yaml, yaml_value

    if args.dataset.endswith((".yaml", ".yml")):
        path = Path(args.dataset)
        if not path.is_file():
            raise ConfigError(f"dataset spec {path} does not exist")
        raw = load_yaml(path, "dataset spec") or {}
        raw = raw.get("data", raw) if isinstance(raw, dict) else raw
    else:
        raw = {"kind": args.dataset}
    if not isinstance(raw, dict):
        raise ConfigError(f"dataset spec {args.dataset}: expected a mapping")
    for key in ("root", "resolution", "split", "max_items"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    opts = dict(raw.get("options", {}))
    for item in args.opt:
        if "=" not in item:
            raise ConfigError(f"--opt {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        opts[k] = yaml_value(v, f"--opt {k}")
    raw["options"] = opts
    return validate_model(DatasetSpec, raw, "data.")


def run(args: argparse.Namespace) -> int:
    from bench.data.spec import build_dataset
    from bench.method import ConfigError
    from bench.metrics.api import build_reference
    from bench.metrics.assets import AssetFolder
    from bench.metrics.cmmd import CmmdSettings

    spec = dataset_spec(args)
    meta = {}
    if args.fid30k:
        # COCO FID-30K: the coco reader's `fid30k` split yields exactly the 30k val2014 image/caption pairs
        # drawn with a fixed seed (bench.data.coco.fid30k_pairs).
        if spec.kind != "coco":
            raise ConfigError(f"--fid30k needs dataset kind 'coco', got {spec.kind!r}")
        spec.split = "fid30k"
        spec.options = {**spec.options, "subset_seed": args.seed}
        meta["protocol"] = {"name": "coco-fid30k", "seed": args.seed}
    assets = AssetFolder(args.assets)
    dataset = build_dataset(spec)
    indices = None
    meta["dataset"] = spec.model_dump(mode="json")
    out = build_reference(dataset, args.out, assets, extractor=args.extractor, max_items=None,
                          pr_images=args.pr_images, seed=args.seed, batch=args.batch, dinov2=args.dinov2,
                          device=args.device, meta=meta, indices=indices, progress=not args.no_progress,
                          cmmd=CmmdSettings(model=args.cmmd_model, pretrained=args.cmmd_pretrained) if args.cmmd
                          else None)
    print(f"wrote {out}")
    return 0
