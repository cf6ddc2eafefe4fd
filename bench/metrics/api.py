"""High-level entry points used by the commands: evaluate a run folder / npz / image folder, and build
reference statistics from a dataset."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.io import atomic_write_json
from bench.method import ConfigError
from bench.metrics.assets import AssetFolder
from bench.metrics.evaluate import EvalSettings, StreamingEvaluator, compute_reference_moments, resolve_device
from bench.metrics.extractors import build_extractor
from bench.metrics.reference import PR_REFERENCE_IMAGES, read_reference, write_reference
from bench.metrics.sources import (SampleBatch, count_npz, iter_dataset, iter_folder, iter_npz, list_images,
                                   to_nchw_uint8)


def open_source(target: str | Path, batch: int, *, seeds: list[int] | None = None, steps: int | None = None,
                guidance: float = 1.0, limit: int | None = None) -> tuple[Iterator[SampleBatch], int | None,
                                                                            dict[str, Any]]:
    """(batches, total, description) for an npz file, an image folder, or a run folder (its sample shards
    when ``seeds`` is None, otherwise fresh samples streamed from the sampler without touching disk)."""
    target = Path(target)
    if target.is_file():
        if target.suffix != ".npz":
            raise ConfigError(f"{target}: expected a samples .npz (arr_0 uint8 NHWC), an image folder or a run folder")
        n = count_npz(target)
        return iter_npz(target, batch, limit), min(n, limit or n), {"kind": "npz", "path": str(target)}
    if not target.is_dir():
        raise ConfigError(f"{target} does not exist (expected a run folder, a samples .npz or an image folder)")
    if seeds is not None:
        from bench.sample import captions_for_seeds, iter_samples, load_run

        method, cfg = load_run(target, device=resolve_device("auto"))
        seeds = seeds[:limit] if limit else seeds
        texts, captions = (captions_for_seeds(cfg, seeds) if method.config.conditioning == "text"
                           else (None, None))

        def gen() -> Iterator[SampleBatch]:
            done = 0
            for chunk, imgs, labels, _nfe in iter_samples(None, seeds, batch, steps, guidance, method=method,
                                                          texts=texts):
                caps = None if captions is None else captions[done:done + len(chunk)]
                done += len(chunk)
                yield SampleBatch(to_nchw_uint8(imgs, "sampler"), labels, caps, list(chunk))
        return gen(), len(seeds), {"kind": "sampler", "run_dir": str(target), "method": cfg.method,
                                   "seeds": _seed_summary(seeds), "steps": steps, "guidance": guidance}
    shards = sorted((target / "samples").glob("*.npz")) if (target / "samples").is_dir() else []
    if shards:
        total = sum(count_npz(s) for s in shards)

        def chain() -> Iterator[SampleBatch]:
            left = limit
            for s in shards:
                for b in iter_npz(s, batch, left):
                    yield b
                    if left is not None:
                        left -= len(b)
                if left is not None and left <= 0:
                    return
        return chain(), min(total, limit or total), {"kind": "run-samples", "run_dir": str(target),
                                                     "shards": [str(s) for s in shards]}
    files = list_images(target)
    return iter_folder(target, batch, limit), min(len(files), limit or len(files)), {"kind": "folder",
                                                                                      "path": str(target)}


def _seed_summary(seeds: list[int]) -> dict[str, Any]:
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds))) if seeds else True
    return {"n": len(seeds), "range": f"{seeds[0]}-{seeds[-1]}" if seeds and contiguous else None,
            "list": None if contiguous else seeds[:1000]}


def evaluate(target: str | Path, settings: EvalSettings, assets: AssetFolder, ref_path: str | Path | None = None,
             out: str | Path | None = None, *, seeds: list[int] | None = None, steps: int | None = None,
             guidance: float = 1.0, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate and write ``metrics.json`` (default: beside the run folder / npz)."""
    t0 = time.time()
    reference = read_reference(ref_path) if ref_path else None
    ev = StreamingEvaluator(settings, assets, reference)
    batches, total, source = open_source(target, settings.batch, seeds=seeds, steps=steps, guidance=guidance,
                                         limit=limit)
    seen_seeds: list[int] = []

    def tap() -> Iterator[SampleBatch]:
        for b in batches:
            if b.seeds is not None and len(seen_seeds) < 100_000:
                seen_seeds.extend(b.seeds)
            yield b
    result = ev.run(tap(), total=total, progress=progress)
    source.setdefault("guidance", guidance)
    if seen_seeds and "seeds" not in source:
        source["seeds"] = _seed_summary(seen_seeds)
    result = {"samples": source, **result, "wall_seconds": round(time.time() - t0, 3)}
    target = Path(target)
    if out is None:
        out = target / "metrics.json" if target.is_dir() and source["kind"] != "folder" else \
            target.with_suffix(".metrics.json") if target.is_file() else target / "metrics.json"
    atomic_write_json(out, result)
    result["written_to"] = str(out)
    return result


def build_reference(dataset, out: str | Path, assets: AssetFolder, *, extractor: str = "inception",
                    max_items: int | None = None, pr_images: int = PR_REFERENCE_IMAGES, seed: int = 0,
                    batch: int = 64, dinov2: str | None = None, device: str = "auto", meta: dict | None = None,
                    indices: list[int] | None = None, progress: bool = True, cmmd=None) -> Path:
    """Stats over the whole dataset (or ``indices``) + a fixed-seed subset of ``pr_images`` images as arr_0."""
    dev = resolve_device(device)
    ex = build_extractor(extractor, assets, dev)
    dino = build_extractor(dinov2, assets, dev) if dinov2 else None
    clip_emb = None
    if cmmd is not None:     # a CmmdSettings: also store every image's CLIP embedding for CMMD
        from bench.metrics.cmmd import ClipImageEmbedder
        clip_emb = ClipImageEmbedder(cmmd, assets, dev)
    idx = list(indices) if indices is not None else list(range(len(dataset)))
    if max_items is not None:
        idx = idx[:max_items]
    if len(idx) < 2:
        raise ConfigError(f"dataset has {len(idx)} images; reference statistics need at least 2")
    g = torch.Generator().manual_seed(seed)
    keep = set(torch.randperm(len(idx), generator=g)[:pr_images].tolist()) if pr_images else None
    res = compute_reference_moments(iter_dataset(dataset, idx, batch), ex, keep, dino, progress, len(idx), clip_emb)
    info = {"n_images": len(idx), "pr_subset_seed": seed, "pr_images": 0 if keep is None else len(keep),
            "extractor_official": getattr(ex, "official", None), **(meta or {})}
    return write_reference(out, family=ex.family, extractor_id=ex.id, pool=res["pool"], spatial=res["spatial"],
                           images=res["images"], pool_images=res["pool_images"], dinov2=res["dinov2"],
                           dinov2_id=None if dino is None else dino.id, meta=info, cmmd_emb=res["cmmd_emb"],
                           cmmd_id=None if clip_emb is None else clip_emb.id)

