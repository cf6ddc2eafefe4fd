"""Baseline rows for a suite's table: what a score must beat before it says that a method learned.

- ``gaussian``: samples of a Gaussian with the training images' per-pixel mean and full pixel covariance
  (it matches every second moment in pixel space, so a score must see more than that);
- ``untrained``: each cell's network at initialisation (the trainer's seed), sampled with the cell's
  own sampler and seeds.

Each baseline is written as a run folder beside the cells (``baseline-*``: cell.yaml, samples, metrics.json,
status done), evaluated with the suite's own metrics and reference, so the report lists it as a row.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.suite import BASELINES  # noqa: F401  (the suite schema owns the allowed names)

GAUSSIAN_SEED = 12345


def gaussian_samples(images: torch.Tensor, n: int, seed: int = GAUSSIAN_SEED) -> torch.Tensor:
    """n draws (uint8 NCHW) of N(mean, covariance) of ``images`` (uint8 NCHW) in [-1, 1] pixel space."""
    x = images.double().flatten(1) / 127.5 - 1.0
    mean, cov = x.mean(0), torch.cov(x.T)
    d = cov.shape[0]
    jitter = 1e-6 * float(cov.diagonal().mean())      # fewer images than pixels: the covariance is singular
    chol = torch.linalg.cholesky(cov + jitter * torch.eye(d, dtype=cov.dtype))
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = (mean + z @ chol.T).reshape(n, *images.shape[1:])
    return ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def untrained_method(run: dict[str, Any] | Any):
    """A cell's method at initialisation: seeded like the trainer, every stage entered, eval mode."""
    from bench.config import RunConfig
    from bench.method import build_method, validate_model

    cfg = run if isinstance(run, RunConfig) else validate_model(RunConfig, run)
    torch.manual_seed(cfg.seed)
    m = build_method(cfg.method, cfg.preset, cfg.method_config)
    for s in m.stages():
        if s.enter:
            s.enter()
    for mod in m.modules().values():
        mod.eval()
    return m


def _dataset_images(data_spec: dict[str, Any]) -> torch.Tensor:
    from bench.data.spec import DatasetSpec, build_dataset
    from bench.method import validate_model

    ds = build_dataset(validate_model(DatasetSpec, {**data_spec, "text": None}, prefix="data."), with_text=False)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def _write(folder: Path, cell: dict[str, Any], images: np.ndarray, labels: np.ndarray | None, seeds: list[int],
           nfe: int, metrics_fn: Callable, suite_dir: Path) -> dict[str, Any]:
    from bench.io import atomic_write_json
    from bench.sample import save_grid, save_npz
    from bench.store import RunFolder, now
    from bench.suite import setting_tag

    rf = RunFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rf.write_cell(cell)
    tag = setting_tag(None, 1.0)
    shard = rf.samples / tag / "shard-0000-of-0001.npz"
    save_npz(shard, images, labels, seeds, nfe=np.asarray(nfe), guidance=np.asarray(1.0))
    save_grid(shard.with_suffix(".png"), images)
    result = metrics_fn({**cell, "_suite_dir": str(suite_dir)}, [shard])
    values = result.get("metrics", result)
    record = {"cell": cell["id"], "label": cell["label"], "baseline": True,
              "settings": [{"steps": None, "guidance": 1.0, "tag": tag, "n_samples": len(seeds), "nfe": nfe,
                            **values}], "evaluated_at": now()}
    atomic_write_json(rf.metrics_file, record)
    rf.set_status("done")
    return record


def run_baselines(kinds: list[str], planned: list, suite_dir: Path, metrics_fn: Callable | None = None,
                  log: Callable[[str], None] = print) -> list[str]:
    """Write (or keep, when finished) the baseline folders of ``kinds`` for the planned cells; returns their ids."""
    from bench.launch import default_metrics
    from bench.sample import iter_samples
    from bench.store import RunFolder
    from bench.suite import shard_seeds

    metrics_fn = metrics_fn or default_metrics
    done: list[str] = []
    by_dataset: dict[str, list] = {}
    for pc in planned:
        by_dataset.setdefault(pc.cell.dataset, []).append(pc)
    for ds, cells in by_dataset.items():
        first = cells[0].cell
        seeds = [s for k in range(first.sampling["shards"]) for s in shard_seeds(first.sampling, k)]
        jobs: list[tuple[str, str, Any]] = []
        if "gaussian" in kinds:
            jobs.append((f"baseline-gaussian-{ds}", "baseline: gaussian", None))
        if "untrained" in kinds:
            jobs += [(f"baseline-untrained-{pc.cell.id}", f"{pc.cell.label} (untrained)", pc) for pc in cells]
        for cid, label, pc in jobs:
            folder = suite_dir / cid
            rf = RunFolder(folder)
            if rf.status() == "done" and rf.metrics_file.is_file():
                done.append(cid)
                continue
            src = (pc.cell if pc is not None else first).to_dict()
            cell = copy.deepcopy(src) | {"id": cid, "label": label, "baseline": True,
                                         "method": src["method"] if pc is not None else "gaussian"}
            if pc is None:
                imgs = gaussian_samples(_dataset_images(first.run["data"]), len(seeds))
                images, labels, nfe = imgs.permute(0, 2, 3, 1).numpy(), None, 0
            else:
                method = untrained_method(pc.cell.run)
                parts, labs, nfe = [], [], 0
                for _, x, lab, nfe in iter_samples(None, seeds, int(first.sampling["batch"]), method=method):
                    parts.append(x.numpy())
                    if lab is not None:
                        labs.append(lab.numpy())
                images, labels = np.concatenate(parts), (np.concatenate(labs) if labs else None)
            rec = _write(folder, cell, images, labels, seeds, int(nfe), metrics_fn, suite_dir)
            vals = {k: v for k, v in rec["settings"][0].items() if isinstance(v, float)}
            log(f"baseline {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in vals.items()))
            done.append(cid)
    return done
