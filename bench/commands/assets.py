"""`bench assets fetch|check|add|train-extractor`: the one asset folder of metric weights."""
from __future__ import annotations

import argparse

DEFAULT_KEYS = ["inception", "clip:ViT-L-14-quickgelu:openai", "dinov2:vit_large_patch14_dinov2.lvd142m"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="stage / check metric weights (Inception, CLIP, DINOv2, trained extractors)")
    which = p.add_subparsers(dest="assets_cmd", metavar="ACTION")
    f = which.add_parser("fetch", help="download weights into the asset folder (needs internet)")
    f.add_argument("keys", nargs="*", default=None,
                   help="inception | clip:<model>:<pretrained> | dinov2[:<timm-name>] | lpips-vgg16 lpips-vgg-lin "
                        f"(consistency models' LPIPS; the heads are copied from the lpips package) "
                        f"(default: {' '.join(DEFAULT_KEYS)})")
    c = which.add_parser("check", help="list what is present, with hashes; exit 1 if a listed key is missing")
    c.add_argument("keys", nargs="*", default=None)
    a = which.add_parser("add", help="register a weight file you already have")
    a.add_argument("key")
    a.add_argument("file")
    t = which.add_parser("train-extractor", help="train a small CNN on a labelled dataset -> trained:<name>")
    t.add_argument("dataset", help="reader kind or data-spec YAML")
    t.add_argument("--name", required=True)
    t.add_argument("--root", default=None)
    t.add_argument("--resolution", type=int, default=None)
    t.add_argument("--split", default=None)
    t.add_argument("--max-items", type=int, default=None)
    t.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--input-size", type=int, default=64)
    t.add_argument("--device", default="cpu")
    k = which.add_parser("tiny-t2i", help="stage offline stand-ins for the CPU text-to-image demo: a tiny random "
                                          "T5 (tokenizer trained on a dataset's captions) and a random-init CLIP")
    k.add_argument("dataset", help="captioned reader kind (e.g. emoji)")
    k.add_argument("--name", default="tiny-emoji", help="staged as t5:<name>")
    k.add_argument("--root", default=None)
    k.add_argument("--clip-model", default="ViT-B-32-quickgelu", help="staged as clip:<model>:random-init")
    for q in (f, c, a, t, k):
        q.add_argument("--assets", default=None, help="asset folder (default $BENCH_ASSETS or ./assets)")
    f.set_defaults(func=run_fetch)
    c.set_defaults(func=run_check)
    a.set_defaults(func=run_add)
    t.set_defaults(func=run_train)
    k.set_defaults(func=run_tiny_t2i)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def run_fetch(args: argparse.Namespace) -> int:
    from bench.metrics.assets import AssetFolder
    from bench.metrics.fetch import fetch

    folder = AssetFolder(args.assets, offline=False)
    for key in args.keys or DEFAULT_KEYS:
        entry = fetch(folder, key)
        print(f"{key}: staged, sha256 {entry['sha256']}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from bench.metrics.assets import AssetFolder, spec_from_key

    folder = AssetFolder(args.assets)
    specs = [spec_from_key(k) for k in (args.keys or DEFAULT_KEYS)]
    rows = folder.status(specs)
    print(f"asset folder: {folder.root}")
    for r in rows:
        if r["state"] == "ok":
            flag = {True: "official", False: "NOT the published file", None: ""}[r.get("official")]
            print(f"  ok       {r['key']:45s} sha256 {r['sha256'][:16]}  {flag}")
        else:
            print(f"  MISSING  {r['key']:45s} {r['error']}")
    wanted = {s.key for s in specs}
    return 1 if any(r["state"] != "ok" and r["key"] in wanted for r in rows) else 0


def run_add(args: argparse.Namespace) -> int:
    from bench.metrics.assets import AssetFolder, spec_from_key

    folder = AssetFolder(args.assets)
    entry = folder.add(spec_from_key(args.key), args.file, source=f"added from {args.file}")
    print(f"{args.key}: sha256 {entry['sha256']}" + ("" if entry.get("official") in (None, True)
                                                     else " (differs from the published file)"))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from bench.commands.stats import dataset_spec
    from bench.data.spec import build_dataset
    from bench.metrics.assets import AssetFolder
    from bench.metrics.trained import train_extractor

    spec = dataset_spec(args)
    entry = train_extractor(build_dataset(spec), args.name, AssetFolder(args.assets), epochs=args.epochs,
                            batch=args.batch, input_size=args.input_size, device=args.device,
                            source=f"trained on {spec.model_dump_json()}")
    print(f"trained:{args.name}: held-out accuracy {entry['val_accuracy']:.3f}, sha256 {entry['sha256'][:16]}")
    return 0


def run_tiny_t2i(args: argparse.Namespace) -> int:
    """Numbers made with these weights mean nothing beyond the pipeline running; they are marked by name."""
    import tempfile
    from pathlib import Path

    import open_clip
    import torch

    from bench.data.spec import DatasetSpec, build_dataset
    from bench.data.tiny_t5 import stage_tiny_t5
    from bench.metrics.assets import AssetFolder, clip_spec

    folder = AssetFolder(args.assets)
    ds = build_dataset(DatasetSpec(kind=args.dataset, root=args.root, resolution=32))
    caps = [c for i in range(len(ds)) for c in ds.captions_of(i)]
    e = stage_tiny_t5(folder, args.name, caps)
    print(f"t5:{args.name}: {len(caps)} captions, sha256 {e['sha256'][:16]}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=folder.root) as tmp:
        p = Path(tmp) / "clip.bin"
        torch.save(open_clip.create_model(args.clip_model, pretrained=None).state_dict(), p)
        e = folder.add(clip_spec(args.clip_model, "random-init"), p, source="random init (bench assets tiny-t2i)")
    print(f"clip:{args.clip_model}:random-init: sha256 {e['sha256'][:16]}")
    return 0
