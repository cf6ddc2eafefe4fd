"""Intermediate evaluation (suite ``eval_every``): FID-vs-compute curves of one cell.

Training runs in slices (``train(..., stop_after_images=p)`` checkpoints at the stop and resumes exactly);
the checkpoint at each evaluation point is kept under ``ckpt/eval/`` (a name the rotation of
``CheckpointStore`` never deletes) with a sidecar JSON of its training images and FLOPs. Each kept
checkpoint's primary EMA weights (index 0, as the final evaluation) are sampled with the cell's sampling
settings (same n, seeds, steps, guidance) and scored with the same metrics function; the points go to
``metrics_curve.json`` (rewritten atomically per point) and, with the final point, into metrics.json's
``curve``.

Local executor: each point is evaluated right after its slice. SLURM: the training job slices and keeps
the checkpoints; the cell's evaluation job evaluates the kept ones before the final one (so intermediate
evaluations never stall training, but they arrive with the final metrics, not as separate jobs).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from bench.io import atomic_write_json
from bench.store import RunFolder, now
from bench.suite import sampling_settings, setting_tag, shard_seeds

CURVE_FILE = "metrics_curve.json"


def eval_points(cell: dict[str, Any]) -> list[int]:
    """Training-image counts (whole global batches, strictly before the end of training) to evaluate at."""
    every = cell.get("eval_every") or {}
    plan = cell.get("plan") or {}
    batch = int(plan.get("batch") or cell["run"]["train"]["batch"])
    total = int(plan.get("images") or cell["run"]["train"]["images"])
    raw: list[float] = []
    if every.get("images"):
        n = int(every["images"])
        raw = [k * n for k in range(1, math.ceil(total / n) + 1)]
    elif every.get("flops"):
        f, stages = float(every["flops"]), plan.get("stages") or []
        spent, start = 0.0, 0
        target = f
        for s in stages:                      # cumulative FLOPs are piecewise linear in images
            fpe, imgs = float(s["flops_per_example"]), int(s["images"])
            while fpe > 0 and target <= spent + fpe * imgs:
                raw.append(start + (target - spent) / fpe)
                target += f
            spent, start = spent + fpe * imgs, start + imgs
    points = sorted({int(math.ceil(p / batch)) * batch for p in raw})
    return [p for p in points if 0 < p < total]


def kept_dir(rf: RunFolder) -> Path:
    return rf.path / "ckpt" / "eval"


def keep_checkpoint(rf: RunFolder, images: int, flops: float) -> Path | None:
    """Hard-link (copy across filesystems) the checkpoint at ``images`` into ckpt/eval/ with a sidecar."""
    src = rf.path / "ckpt" / f"ckpt-{images:012d}.pt"
    if not src.is_file():
        return None
    dst = kept_dir(rf) / src.name
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    atomic_write_json(dst.with_suffix(".json"), {"images": int(images), "flops": float(flops)})
    return dst


def read_curve(rf: RunFolder) -> list[dict[str, Any]]:
    try:
        return list(json.loads((rf.path / CURVE_FILE).read_text()).get("points", []))
    except (FileNotFoundError, ValueError):
        return []


def evaluate_point(rf: RunFolder, images: int, metrics_fn: Callable, cell_d: dict[str, Any]) -> dict[str, Any]:
    """Sample and score the kept checkpoint at ``images`` with every sampling setting of the cell."""
    import numpy as np

    from bench.distributed import resolve_device
    from bench.flops import sampling_cost
    from bench.launch.scoring import score_setting
    from bench.sample import captions_for_seeds, iter_samples, load_run, save_npz

    ckpt = kept_dir(rf) / f"ckpt-{images:012d}.pt"
    side = json.loads(ckpt.with_suffix(".json").read_text())
    method, cfg = load_run(rf.path, checkpoint=ckpt, device=resolve_device("auto"))
    s = cell_d["sampling"]
    seeds = [x for k in range(int(s["shards"])) for x in shard_seeds(s, k)]     # the final evaluation's seeds
    texts = captions_for_seeds(cfg, seeds)[0] if method.config.conditioning == "text" else None
    rows = []
    for steps, guidance in sampling_settings(s):
        tag = setting_tag(steps, guidance)
        out = rf.path / "curve" / f"{images:012d}" / tag / "shard-0000-of-0001.npz"
        imgs, labs, nfe = [], [], 0
        for _, x, lab, nfe in iter_samples(None, seeds, s["batch"], steps, guidance, method=method, texts=texts):
            imgs.append(x.numpy())
            if lab is not None:
                labs.append(lab.numpy())
        save_npz(out, np.concatenate(imgs), np.concatenate(labs) if labs else None, seeds, nfe=np.asarray(nfe),
                 guidance=np.asarray(guidance))
        try:
            rows.append(score_setting(cell_d, rf, [out], steps, guidance, sampling_cost(method, steps, guidance),
                                      metrics_fn))
        finally:
            out.unlink(missing_ok=True)       # full-size sample sets per point would fill the disk
    point = {"images": int(side["images"]), "flops": float(side["flops"]), "checkpoint": str(ckpt.name),
             "evaluated_at": now(), "settings": rows}
    points = [p for p in read_curve(rf) if int(p["images"]) != point["images"]] + [point]
    atomic_write_json(rf.path / CURVE_FILE, {"points": sorted(points, key=lambda p: p["images"])})
    rf.record("curve", {"last_point": point["images"], "points": len(points), "at": now()})
    return point


def evaluate_curve(rf: RunFolder, metrics_fn: Callable, cell_d: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate every kept checkpoint that has no curve point yet; returns all points, by images."""
    done = {int(p["images"]) for p in read_curve(rf)}
    folder = kept_dir(rf)
    for side in sorted(folder.glob("ckpt-*.json")) if folder.is_dir() else []:
        images = int(json.loads(side.read_text())["images"])
        if images not in done and side.with_suffix(".pt").is_file():
            evaluate_point(rf, images, metrics_fn, cell_d)
    return read_curve(rf)
