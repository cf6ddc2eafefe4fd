"""`bench perf data`: data-loader throughput against what the training step consumes.

Measured side by side in one run:
- loader images/s through the real training stream (bench.data.stream.make_loader: decode, uint8 ->
  [-1, 1], resolution views by average pooling, collate) with ``workers`` processes, for
  (a) the demo suite's dataset as the demo reads it (emoji rendered on the fly, 32 px) and
  (b) prepared zips (the training format) at each of ``resolutions`` (default 64 and 256);
- training images/s of each method's first stage (loss + backward + Adam step) at its preset;
- ratio = loader images/s / training images/s (> 1: loading is not the bottleneck).

Options as key=value after the command, e.g. ``bench perf data workers=2 resolutions=64,256 batch=32``:
resolutions, workers, batch, batches, images, source (emoji | clipart), methods (comma list or all),
preset, train_steps; ``--json FILE`` (or out=FILE) writes the numbers. The defaults finish in about a
minute on 2 CPU cores.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

DEFAULTS: dict[str, Any] = {"resolutions": [64, 256], "workers": 2, "batch": 32, "batches": 8, "images": 192,
                            "source": "emoji", "demo_resolution": 32, "methods": "all", "preset": "cpu-tiny",
                            "train_steps": 2, "out": None}


def parse_options(args: Any) -> dict[str, Any]:
    from bench.method import ConfigError

    from bench.perf.common import pop_json_option

    opts = dict(DEFAULTS)
    json_path, items = pop_json_option(list(getattr(args, "overrides", None) or []))
    if json_path:
        opts["out"] = json_path
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bench perf data: option {item!r}: expected key=value, e.g. workers=2")
        k, v = item.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if k not in DEFAULTS:
            raise ConfigError(f"bench perf data: unknown option {k!r}; allowed: {', '.join(DEFAULTS)}")
        opts[k] = yaml.safe_load(v)
    if isinstance(opts["resolutions"], (int, str)):
        opts["resolutions"] = [int(r) for r in str(opts["resolutions"]).split(",") if r]
    return opts


def loader_throughput(dataset: Any, resolution: int, batch: int, workers: int, batches: int) -> float:
    """Images/s through the training stream, after one warm-up batch (worker start-up excluded)."""
    from bench.data.stream import make_loader

    views = [r for r in (resolution, resolution // 2, resolution // 4) if r >= 4 and resolution % r == 0]
    loader = make_loader(dataset, seed=0, start=0, global_batch=batch, resolutions=views, workers=workers)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    del it
    return batches * batch / dt


def train_throughput(name: str, preset: str, batch: int, steps: int) -> dict[str, Any]:
    """Images/s of the first stage's optimizer step (loss + backward + Adam), CPU, fp32."""
    from bench.method import build_method

    m = build_method(name, preset)
    stage = m.stages()[0]
    if stage.enter is not None:
        stage.enter()
    mods = m.modules()
    names = stage.trainable if stage.trainable is not None else tuple(mods)
    params = [p for k in names for p in mods[k].parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    b = m.example_batch(stage, n=batch)

    def step() -> None:
        loss, _ = m.loss(b, stage)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"method": name, "preset": preset, "resolutions": list(stage.resolutions),
            "train_img_s": steps * batch / dt}


def _prepared(source: str, resolution: int, images: int, folder: Path) -> Any:
    from bench.data.prepare import prepare
    from bench.data.spec import DatasetSpec, build_dataset

    opts = {"max_classes": 8} if source == "clipart" else {}
    out = folder / f"{source}{resolution}.zip"
    prepare(DatasetSpec(kind=source, resolution=resolution, max_items=images, options=opts), out,
            workers=2, progress=False)
    return build_dataset(DatasetSpec(kind="zip", root=str(out), resolution=resolution))


def run_perf_data(args: Any) -> int:
    from bench.data.spec import DatasetSpec, build_dataset
    from bench.method import load_all

    from bench.perf.common import progress, write_json

    o = parse_options(args)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = sorted(load_all()) if o["methods"] == "all" else [s for s in str(o["methods"]).split(",") if s]
    rows: list[dict[str, Any]] = []
    train = []
    with progress(1 + len(o["resolutions"]) + len(names), "perf data") as bar:
        bar.set_postfix_str(f"{o['source']} loader")
        demo = build_dataset(DatasetSpec(kind=o["source"], resolution=o["demo_resolution"]))
        rows.append({"dataset": f"{o['source']} (read directly, as the demo suite)", "resolution": o["demo_resolution"],
                     "loader_img_s": loader_throughput(demo, o["demo_resolution"], o["batch"], o["workers"],
                                                       o["batches"])})
        bar.update()
        with tempfile.TemporaryDirectory() as tmp:
            for r in o["resolutions"]:
                bar.set_postfix_str(f"prepared zip {r}px")
                ds = _prepared(o["source"], int(r), int(o["images"]), Path(tmp))
                rows.append({"dataset": f"{o['source']} prepared zip", "resolution": int(r),
                             "loader_img_s": loader_throughput(ds, int(r), o["batch"], o["workers"], o["batches"])})
                bar.update()
        for name in names:
            bar.set_postfix_str(f"train step {name}")
            try:
                train.append(train_throughput(name, o["preset"], o["batch"], int(o["train_steps"])))
            except Exception as err:  # a method without this preset: say so, keep measuring the others
                train.append({"method": name, "preset": o["preset"], "error": f"{type(err).__name__}: {err}"})
            bar.update()
    demo_rate = rows[0]["loader_img_s"]
    for t in train:
        if "train_img_s" in t:
            t["loader_over_train"] = demo_rate / t["train_img_s"]
    print(f"data loader ({o['workers']} workers, batch {o['batch']}):")
    for row in rows:
        print(f"  {row['dataset']:<45} {row['resolution']:>4}px  {row['loader_img_s']:9.1f} img/s")
    print(f"training step consumption ({o['preset']}, batch {o['batch']}), ratio = demo loader / train:")
    for t in train:
        if "error" in t:
            print(f"  {t['method']:<14} not measured: {t['error']}")
        else:
            print(f"  {t['method']:<14} {str(t['resolutions']):<14} {t['train_img_s']:9.1f} img/s   "
                  f"ratio {t['loader_over_train']:.1f}x")
    ok = [t for t in train if "loader_over_train" in t]
    result = {"options": o, "loader": rows, "train": train,
              "min_ratio": min(t["loader_over_train"] for t in ok) if ok else None}
    write_json(o["out"], result)
    if ok:
        worst = min(ok, key=lambda t: t["loader_over_train"])
        verdict = "not the bottleneck" if worst["loader_over_train"] > 1 else "THE BOTTLENECK"
        print(f"loader throughput / training step consumption: min {worst['loader_over_train']:.1f}x "
              f"({worst['method']}, {demo_rate:.0f} vs {worst['train_img_s']:.0f} img/s): data loading is {verdict}")
    else:
        print("loader throughput / training step consumption: no method measured (see the errors above)")
    return 0
