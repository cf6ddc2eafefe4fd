"""Sampling from a run folder: EMA weights of the latest checkpoint, per-image seeds (EDM style).

Image i depends only on seed i (its noise and, for class-conditional models, its label), so the
result is identical whatever the batch size, the shard split or the number of GPUs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.config import RunConfig, load_run_config
from bench.diffusion.rng import StackedRandom
from bench.ema import EMA
from bench.io import atomic_write
from bench.method import Condition, Method, build_method


def parse_seeds(text: str) -> list[int]:
    """'0-999' or '0,5,7' or '0-9,20-29' -> list of ints (EDM's seed-range syntax)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}; expected e.g. 0-999")
    return seeds


def load_run(run_dir: str | Path, ema_index: int = 0, device: str | torch.device = "cpu",
             checkpoint: str | Path | None = None, trust: bool | None = None) -> tuple[Method, RunConfig]:
    """Rebuild the method of a run folder with the EMA weights (index ``ema_index``) of its latest checkpoint
    (read weights-only unless ``trust``; None: bench.checkpoint.trust_checkpoints decides)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a training run folder (run `bench train` first)")
    cfg = load_run_config(cfg_path)
    path = Path(checkpoint) if checkpoint else CheckpointStore(run_dir / "ckpt").latest()
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'ckpt'}")
    state = load_checkpoint(path, "cpu", trust)
    method = build_method(cfg.method, cfg.preset, cfg.method_config)
    for s in method.stages()[: state["stage_idx"] + 1]:
        if s.enter:
            s.enter()
    method.load_state_dict(state["method"])
    ema = EMA.from_state(method, state["ema"])
    ema.load_state_dict(state["ema"])
    ema.copy_to(method, ema_index)
    method.to(device)
    for m in method.modules().values():
        m.eval()
    return method, cfg


def labels_for_seeds(seeds: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class label of each image, a function of its seed alone."""
    return torch.tensor([int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s + (1 << 40))))
                         for s in seeds], dtype=torch.long)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> uint8 NHWC (the ADM evaluator's layout)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def iter_samples(run_dir: str | Path | None, seeds: Sequence[int], batch: int = 64, steps: int | None = None,
                 guidance: float = 1.0, labels: Sequence[int] | None = None, method: Method | None = None,
                 texts: torch.Tensor | None = None, progress: bool = False) -> Iterator[tuple]:
    """Yield (seeds, uint8 NHWC images, labels or None, nfe) batch after batch."""
    if method is None:
        method, _ = load_run(run_dir)
    cfg = method.config
    seeds = list(seeds)
    all_labels = None
    if cfg.num_classes:
        all_labels = torch.as_tensor(labels, dtype=torch.long) if labels is not None \
            else labels_for_seeds(seeds, cfg.num_classes)
    if cfg.conditioning == "text" and texts is None:
        raise ValueError("a text-conditional method needs caption embeddings (texts=...)")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), unit="img", desc="sample", dynamic_ncols=True)
    for lo in range(0, len(seeds), batch):
        sl = slice(lo, lo + batch)
        chunk = seeds[sl]
        cond = Condition(None if all_labels is None else all_labels[sl].to(method.device),
                         None if texts is None else texts[sl].to(method.device))
        x, nfe = method.sample(StackedRandom(chunk, device=method.device), cond, steps, guidance)
        if bar is not None:
            bar.update(len(chunk))
        yield chunk, to_uint8(x), None if all_labels is None else all_labels[sl], nfe
    if bar is not None:
        bar.close()


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None, seeds: Sequence[int],
             **extra: np.ndarray) -> Path:
    arrays = {"arr_0": images, "seeds": np.asarray(seeds, dtype=np.int64), **extra}
    if labels is not None:
        arrays["arr_1"] = labels
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def make_grid(images: np.ndarray, max_images: int = 64) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC image: a near-square grid, row by row, white where it runs short."""
    imgs = images[:max_images]
    n = len(imgs)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = imgs.shape[1:]
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """One uint8 HWC image (C = 1 or 3) as a PNG, atomically."""
    from PIL import Image

    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    return atomic_write(path, lambda f: pil.save(f, format="PNG"))


def save_grid(path: str | Path, images: np.ndarray, max_images: int = 64) -> Path:
    return save_png(path, make_grid(images, max_images))


def captions_for_seeds(cfg: RunConfig, seeds: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
    """Caption embeddings and texts for text-conditional sampling: image i uses dataset item seed_i mod N."""
    from bench.data.spec import build_dataset

    ds = build_dataset(cfg.data)
    items = [ds[int(s) % len(ds)] for s in seeds]
    if "text" not in items[0]:
        raise ValueError(f"dataset {cfg.data.kind!r} yields no caption embeddings: set data.text in the run config")
    return torch.stack([it["text"] for it in items]), [str(it.get("caption", "")) for it in items]


def sample_to_npz(run_dir: str | Path, seeds: Sequence[int], out: str | Path, *, batch: int = 64,
                  steps: int | None = None, guidance: float = 1.0, device: str = "auto",
                  grid: bool = True, progress: bool = False) -> Path:
    from bench.distributed import resolve_device

    method, cfg = load_run(run_dir, device=resolve_device(device))
    texts, captions = None, None
    if method.config.conditioning == "text":
        texts, captions = captions_for_seeds(cfg, seeds)
    imgs, labs, nfe = [], [], 0
    for _, x, lab, nfe in iter_samples(None, seeds, batch, steps, guidance, method=method, texts=texts,
                                       progress=progress):
        imgs.append(x.numpy())
        if lab is not None:
            labs.append(lab.numpy())
    images = np.concatenate(imgs)
    out = Path(out)
    extra = {"captions": np.asarray(captions)} if captions is not None else {}
    save_npz(out, images, np.concatenate(labs) if labs else None, seeds, nfe=np.asarray(nfe),
             guidance=np.asarray(guidance), **extra)
    if grid:
        save_grid(out.with_suffix(".png"), images)
    return out
