"""`bench perf eval`: streaming evaluation vs "write PNGs, then run torch-fidelity on the folder".

Both pipelines compute FID of the same N generated images against the same reference statistics
with the same Inception weights; each runs in a fresh process so its peak RSS is its own. The
streaming pipeline is also run at N/2 to show that its peak memory does not grow with N.
Arguments (after `bench perf eval`): --n 512 --resolution 64 --batch 64 --ref-n 256 --assets DIR
--random-weights --device auto --out perf_eval.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench perf eval")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ref-n", type=int, default=256)
    p.add_argument("--assets", default=None)
    p.add_argument("--random-weights", action="store_true", help="stage random calibrated Inception weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    argv = [f"--{a.split('=', 1)[0]}={a.split('=', 1)[1]}" if "=" in a and not a.startswith("-") else a
            for a in argv]
    return p.parse_args(argv)


def _images(seeds: list[int], resolution: int):
    import torch

    from bench.data.synthetic import SyntheticShapes
    return torch.stack([SyntheticShapes(resolution, n=1, seed=1000 + s)[0]["image"] for s in seeds])


def _reset_peak_rss() -> None:
    """A spawned child inherits the parent's high-water mark; Linux resets it on '5' > clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _streaming(cfg: dict[str, Any], q) -> None:
    import torch

    from bench.metrics.assets import AssetFolder
    from bench.metrics.evaluate import EvalSettings, StreamingEvaluator
    from bench.metrics.reference import read_reference
    from bench.metrics.sources import iter_generator

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _reset_peak_rss()
    t0 = time.perf_counter()
    ev = StreamingEvaluator(EvalSettings(metrics=["fid"], batch=cfg["batch"], device=cfg["device"]),
                            AssetFolder(cfg["assets"]), read_reference(cfg["ref"]))
    res = ev.run(iter_generator(lambda s: _images(s, cfg["resolution"]), list(range(cfg["n"])), cfg["batch"]),
                 progress=False)
    q.put({"seconds": time.perf_counter() - t0, "fid": res["metrics"]["fid"], "peak_rss_mib": _peak_rss_mib()})


def _png_then_torch_fidelity(cfg: dict[str, Any], q) -> None:
    import torch
    import torch_fidelity
    from PIL import Image

    from bench.metrics.assets import AssetFolder, inception_spec

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    weights, _ = AssetFolder(cfg["assets"]).require(inception_spec())
    _reset_peak_rss()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for lo in range(0, cfg["n"], cfg["batch"]):
            imgs = _images(list(range(lo, min(lo + cfg["batch"], cfg["n"]))), cfg["resolution"])
            for i, im in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
                Image.fromarray(im).save(Path(tmp) / f"{lo + i:06d}.png")
        t_write = time.perf_counter() - t0
        out = torch_fidelity.calculate_metrics(
            input1=tmp, input2=cfg["ref_png"], fid=True, cuda=cfg["device"] == "cuda", batch_size=cfg["batch"],
            feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
            cache=True, input2_cache_name="bench-perf-eval-ref", verbose=False, save_cpu_ram=True)
    q.put({"seconds": time.perf_counter() - t0, "write_seconds": t_write,
           "fid": out["frechet_inception_distance"], "peak_rss_mib": _peak_rss_mib()})


def _in_process(fn, cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(cfg, q))
    p.start()
    res = q.get()
    p.join()
    return res


def run_perf_eval(args: argparse.Namespace) -> int:
    from PIL import Image

    from bench.data.synthetic import SyntheticShapes
    from bench.metrics.api import build_reference
    from bench.metrics.assets import AssetFolder
    from bench.metrics.evaluate import resolve_device
    from bench.metrics.randinit import stage_random_inception

    a = _parse(list(getattr(args, "overrides", []) or []))
    work = Path(tempfile.mkdtemp(prefix="bench-perf-eval-"))
    os.environ["TORCH_HOME"] = str(work / "torch")  # torch-fidelity's stats cache lives there
    assets = AssetFolder(a.assets or (work / "assets"))
    if a.random_weights or a.assets is None:
        stage_random_inception(assets)
    device = str(resolve_device(a.device))
    ds = SyntheticShapes(a.resolution, n=a.ref_n, seed=0)
    ref = work / "ref.npz"
    build_reference(ds, ref, assets, pr_images=0, batch=a.batch, device=device, progress=False)
    ref_png = work / "ref_png"
    ref_png.mkdir()
    for i in range(len(ds)):
        Image.fromarray(ds[i]["image"].permute(1, 2, 0).numpy()).save(ref_png / f"{i:06d}.png")
    cfg = {"n": a.n, "resolution": a.resolution, "batch": a.batch, "device": device, "assets": str(assets.root),
           "ref": str(ref), "ref_png": str(ref_png)}
    # warm torch-fidelity's cache of the reference folder so both sides start from reference statistics
    _in_process(_png_then_torch_fidelity, {**cfg, "n": min(a.batch, a.n)})
    stream = _in_process(_streaming, cfg)
    stream_half = _in_process(_streaming, {**cfg, "n": max(2, a.n // 2)})
    base = _in_process(_png_then_torch_fidelity, cfg)
    report = {"n": a.n, "resolution": a.resolution, "device": device, "batch": a.batch, "streaming": stream,
              f"streaming_n{max(2, a.n // 2)}": stream_half, "png_then_torch_fidelity": base,
              "speedup": base["seconds"] / stream["seconds"],
              "fid_abs_diff": abs(base["fid"] - stream["fid"]),
              "clean_fid": "not run: needs the NVIDIA TorchScript Inception, which the asset folder does not stage"}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        from bench.io import atomic_write_text
        atomic_write_text(a.out, text + "\n")
    return 0
