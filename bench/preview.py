"""Preview grids while a run trains: the same few seeds, sampled from the primary EMA, every N images.

Seeds 0 .. n-1 every time (a class label or caption is a function of its seed, as in `bench sample`),
so a person watches the same samples sharpen; they are also the first images `bench sample --seeds 0-…`
gives at the end. The grid is drawn from a deep copy of the method with the EMA loaded, under a forked
RNG, with the sampler's own per-seed generators: the training weights, their train/eval modes and the
global RNG are untouched, so a run with previews trains exactly as one without and resumes bit for bit.
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.config import RunConfig
from bench.ema import EMA
from bench.method import Method
from bench.sample import captions_for_seeds, iter_samples, make_grid, save_png


def preview_path(run_dir: str | Path, images: int) -> Path:
    return Path(run_dir) / "previews" / f"preview-{images:012d}.png"


class Previewer:
    """Knows when the next grid is due and draws it; a resumed run computes the same schedule."""

    def __init__(self, cfg: RunConfig, start_images: int = 0):
        t = cfg.train
        self.cfg, self.every, self.steps = cfg, t.preview_images, t.preview_steps
        self.seeds = list(range(t.preview_grid))
        # The first multiple of `every` past the resume point: the grid at the last one came before.
        self.next = None if not self.every else (start_images // self.every + 1) * self.every
        self._texts: torch.Tensor | None = None

    def due(self, images: int) -> bool:
        return self.next is not None and images >= self.next

    @torch.no_grad()
    def grid(self, method: Method, ema: EMA, images: int) -> np.ndarray:
        """uint8 HWC grid of the preview seeds from EMA 0, and schedule the next one."""
        self.next = (images // self.every + 1) * self.every if self.every else None
        if method.config.conditioning == "text" and self._texts is None:
            self._texts = captions_for_seeds(self.cfg, self.seeds)[0]
        cuda = [method.device] if method.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            shadow = copy.deepcopy(method)
            ema.copy_to(shadow, index=0)
            for m in shadow.modules().values():
                m.eval()
            out = [x.numpy() for _, x, _, _ in iter_samples(None, self.seeds, len(self.seeds), self.steps,
                                                           method=shadow, texts=self._texts)]
            del shadow
        return make_grid(np.concatenate(out), max_images=len(self.seeds))

    def __call__(self, run_dir: str | Path, method: Method, ema: EMA,
                 images: int) -> tuple[Path, np.ndarray, float] | None:
        """Draw the grid, write previews/preview-<images>.png atomically; (path, grid, seconds taken).

        None for a method that does not generate from noise alone (a decoder needs inputs): no previews."""
        if not getattr(method, "generative", True):
            warnings.warn(f"train.preview_images: {method.name!r} is not generative (it decodes given inputs); "
                          "no preview grids for it", stacklevel=2)
            self.next = None
            return None
        tic = time.perf_counter()
        g = self.grid(method, ema, images)
        path = save_png(preview_path(run_dir, images), g)
        return path, g, time.perf_counter() - tic
