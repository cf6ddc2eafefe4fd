"""`bench data ...`: prepare datasets into the training format, inspect them, write the COCO FID-30K subset.

  bench data prepare clipart --out data/clipart64.zip --resolution 64
  bench data prepare imagenet --root /data/ILSVRC2012 --split train --out /scratch/in64 --resolution 64 --workers 16
  bench data info data/clipart64.zip
  bench data fid30k --root /data/coco --out coco_fid30k.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bench.method import ConfigError
from bench.safeload import yaml_value


def _options(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--option {item!r}: expected key=value, e.g. --option max_per_class=100")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml_value(v, f"--option {k.strip()}")
    return out


def _spec(args: argparse.Namespace):
    from bench.data.spec import DatasetSpec
    from bench.method import validate_model

    data = {"kind": args.kind, "root": args.root, "resolution": args.resolution, "split": args.split,
            "max_items": args.max_items, "options": _options(args.option)}
    return validate_model(DatasetSpec, {k: v for k, v in data.items() if v is not None}, prefix="data.")


def _add_source_args(p: argparse.ArgumentParser, resolution_required: bool) -> None:
    p.add_argument("kind", help="dataset kind: folder, zip, webdataset, imagenet, celebahq, coco, clipart, emoji")
    p.add_argument("--root", help="dataset root (clipart / emoji default to the Debian package paths)")
    p.add_argument("--resolution", type=int, required=resolution_required, default=None if resolution_required else 32)
    p.add_argument("--split", default="train", help="train | val (ImageNet), train2014 | val2014 | fid30k ... (COCO)")
    p.add_argument("--max-items", type=int, default=None, help="only the first N items")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader option (repeatable)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from bench.data.prepare import prepare

    spec = _spec(args)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    man = prepare(spec, args.out, fmt=args.format, workers=workers, shard_size=args.shard_size,
                  on_corrupt=args.on_corrupt, progress=not args.no_progress)
    print(f"prepared {man['count']} images ({man['resolution']}px, {man['num_classes']} classes, "
          f"{man['captions']} captions) -> {args.out}")
    print(f"skipped {man['skipped']} unreadable images" + (f" (listed in {man['skipped_report']})"
                                                          if man["skipped"] else ""))
    print(f"content hash {man['content_hash']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from bench.data.archive import read_manifest
    from bench.data.spec import build_dataset

    if os.path.exists(args.kind):  # a prepared zip or shard folder
        info = read_manifest(args.kind)
    else:
        ds = build_dataset(_spec(args), with_text=False)
        info = ds.info() if hasattr(ds, "info") else {"items": len(ds), "resolution": ds.resolution,
                                                      "channels": ds.channels, "num_classes": ds.num_classes}
    if not args.verbose and len(info.get("class_names") or []) > 12:
        info = {**info, "class_names": info["class_names"][:12] + [f"... ({len(info['class_names'])} in all)"]}
    json.dump(info, sys.stdout, indent=1)
    print()
    return 0


def cmd_fid30k(args: argparse.Namespace) -> int:
    from bench.data.coco import fid30k_pairs, write_pairs

    pairs = fid30k_pairs(args.root, args.n, args.seed)
    write_pairs(pairs, args.out)
    print(f"wrote {len(pairs)} val2014 image/caption pairs (seed {args.seed}) -> {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="prepare and inspect datasets")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    prep = sub.add_parser("prepare", help="convert a dataset into a zip or tar shards with a manifest")
    _add_source_args(prep, resolution_required=True)
    prep.add_argument("--out", required=True, help="x.zip (EDM-style zip) or a folder (tar shards)")
    prep.add_argument("--format", choices=("zip", "shards"), default=None, help="default: from --out")
    prep.add_argument("--shard-size", type=int, default=1000, help="images per tar shard")
    prep.add_argument("--workers", type=int, default=None, help="decoding processes (default min(8, cpus))")
    prep.add_argument("--on-corrupt", choices=("skip", "fail"), default="skip",
                      help="skip (and list in a report file) or stop at the first unreadable image")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(func=cmd_prepare)

    info = sub.add_parser("info", help="manifest of a prepared dataset, or a summary of a readable one")
    _add_source_args(info, resolution_required=False)
    info.add_argument("--verbose", action="store_true", help="list every class name")
    info.set_defaults(func=cmd_info)

    fid = sub.add_parser("fid30k", help="write the COCO FID-30K val2014 image/caption subset (JSON lines)")
    fid.add_argument("--root", required=True, help="COCO root (annotations/captions_val2014.json)")
    fid.add_argument("--out", required=True)
    fid.add_argument("--n", type=int, default=30_000)
    fid.add_argument("--seed", type=int, default=0)
    fid.set_defaults(func=cmd_fid30k)
