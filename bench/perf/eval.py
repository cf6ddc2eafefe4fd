"""`bench perf eval`: streaming evaluation vs "write PNGs, then run torch-fidelity on the folder".

Both pipelines compute FID of the same N generated images against the same reference statistics
with the same Inception weights; each runs in a fresh process so its peak RSS is its own. The
streaming pipeline is also run at N/4 to show that its peak memory does not grow with N (both sizes
are reported; the smaller is at least one full batch, so both hold the same batch). Arguments (after `bench perf eval`): --n 128 --resolution 32 --batch 32 --ref-n 64
--assets DIR --random-weights --device auto --json FILE. The defaults finish in about 1-2 minutes on
2 CPU cores; Inception at 299 px dominates both sides at small N, so the speed-up grows with resolution
(PNG encoding) and N.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench perf eval")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ref-n", type=int, default=64)
    p.add_argument("--assets", default=None)
    p.add_argument("--random-weights", action="store_true", help="stage random calibrated Inception weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", "--out", dest="json", default=None, metavar="FILE", help="write the numbers here")
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


def _streaming(cfg: dict[str, Any]) -> dict[str, Any]:
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
    return {"n": cfg["n"], "seconds": time.perf_counter() - t0, "fid": res["metrics"]["fid"],
            "peak_rss_mib": _peak_rss_mib()}


def _png_then_torch_fidelity(cfg: dict[str, Any]) -> dict[str, Any]:
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
    return {"n": cfg["n"], "seconds": time.perf_counter() - t0, "write_seconds": t_write,
            "fid": out["frechet_inception_distance"], "peak_rss_mib": _peak_rss_mib()}


def run_perf_eval(args: argparse.Namespace) -> int:
    from PIL import Image

    from bench.data.synthetic import SyntheticShapes
    from bench.metrics.api import build_reference
    from bench.metrics.assets import AssetFolder
    from bench.metrics.evaluate import resolve_device
    from bench.metrics.randinit import stage_random_inception

    from bench.perf.common import in_fresh_process, progress, write_json

    a = _parse(list(getattr(args, "overrides", []) or []))
    work = Path(tempfile.mkdtemp(prefix="bench-perf-eval-"))
    os.environ["TORCH_HOME"] = str(work / "torch")  # torch-fidelity's stats cache lives there
    assets = AssetFolder(a.assets or (work / "assets"))
    if a.random_weights or a.assets is None:
        stage_random_inception(assets)
    device = str(resolve_device(a.device))
    small = min(a.n, max(a.batch, a.n // 4))      # whole batches at both sizes: same activations
    with progress(5, "perf eval") as bar:
        bar.set_postfix_str(f"reference statistics, {a.ref_n} images")
        ds = SyntheticShapes(a.resolution, n=a.ref_n, seed=0)
        ref = work / "ref.npz"
        build_reference(ds, ref, assets, pr_images=0, batch=a.batch, device=device, progress=False)
        ref_png = work / "ref_png"
        ref_png.mkdir()
        for i in range(len(ds)):
            Image.fromarray(ds[i]["image"].permute(1, 2, 0).numpy()).save(ref_png / f"{i:06d}.png")
        cfg = {"n": a.n, "resolution": a.resolution, "batch": a.batch, "device": device, "assets": str(assets.root),
               "ref": str(ref), "ref_png": str(ref_png)}
        bar.update()
        # warm torch-fidelity's cache of the reference folder so both sides start from reference statistics
        bar.set_postfix_str("torch-fidelity reference cache")
        in_fresh_process(_png_then_torch_fidelity, {**cfg, "n": min(8, a.n)})
        bar.update()
        bar.set_postfix_str(f"streaming, {small} images")
        stream_small = in_fresh_process(_streaming, {**cfg, "n": small})
        bar.update()
        bar.set_postfix_str(f"streaming, {a.n} images")
        stream = in_fresh_process(_streaming, cfg)
        bar.update()
        bar.set_postfix_str(f"PNG folder + torch-fidelity, {a.n} images")
        base = in_fresh_process(_png_then_torch_fidelity, cfg)
        bar.update()
    growth = stream["peak_rss_mib"] - stream_small["peak_rss_mib"]
    report = {"n": a.n, "resolution": a.resolution, "device": device, "batch": a.batch, "streaming": stream,
              "streaming_small": stream_small, "png_then_torch_fidelity": base,
              "speedup": base["seconds"] / stream["seconds"],
              "fid_abs_diff": abs(base["fid"] - stream["fid"]),
              "fid_rel_diff": abs(base["fid"] - stream["fid"]) / max(abs(base["fid"]), 1e-12),
              "streaming_peak_rss_growth_mib": growth,
              "clean_fid": "not run: needs the NVIDIA TorchScript Inception, which the asset folder does not stage"}
    print(f"streaming        : {stream['seconds']:7.2f} s for {a.n} images, peak RSS {stream['peak_rss_mib']:.0f} MiB "
          f"({small} images: {stream_small['seconds']:.2f} s, peak RSS {stream_small['peak_rss_mib']:.0f} MiB)")
    print(f"PNG + torch-fid. : {base['seconds']:7.2f} s for {a.n} images (writing PNGs {base['write_seconds']:.2f} s), "
          f"peak RSS {base['peak_rss_mib']:.0f} MiB")
    print(f"FID streaming {stream['fid']:.4f} vs torch-fidelity {base['fid']:.4f} "
          f"(|diff| {report['fid_abs_diff']:.2e}, relative {report['fid_rel_diff']:.1e})")
    write_json(a.json, report)
    print(f"streaming evaluation is {report['speedup']:.2f}x faster than PNG dump + torch-fidelity "
          f"({a.n} images, {a.resolution} px, {device}); its peak memory moved {growth:+.0f} MiB from {small} to "
          f"{a.n} images")
    shutil.rmtree(work, ignore_errors=True)
    return 0
