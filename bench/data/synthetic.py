"""A deterministic synthetic dataset (coloured shapes), for tests and smoke runs without files."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bench.data.registry import reader

if TYPE_CHECKING:
    from bench.data.spec import DatasetSpec


class SyntheticShapes:
    """Item i: a filled square or disc of a class-dependent colour on a noisy background."""

    def __init__(self, resolution: int = 32, n: int = 512, num_classes: int = 4, seed: int = 0, text_dim: int = 0):
        self.resolution, self.n, self.num_classes, self.channels, self.seed = resolution, n, num_classes, 3, seed
        self.text_dim = text_dim      # > 0: each item carries a fixed random "caption embedding"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        r = self.resolution
        label = i % self.num_classes if self.num_classes else -1
        hue = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])[max(label, 0) % 4]
        img = 0.3 + 0.1 * torch.rand(3, r, r, generator=g)
        size = int(r * (0.3 + 0.3 * torch.rand((), generator=g)))
        y0, x0 = (torch.randint(0, r - size + 1, (2,), generator=g)).tolist()
        yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
        if label % 2 == 0:
            mask = (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)
        else:
            c = size / 2
            mask = (yy - y0 - c) ** 2 + (xx - x0 - c) ** 2 <= c * c
        img = torch.where(mask, hue[:, None, None].expand(3, r, r), img)
        item = {"image": (img.clamp(0, 1) * 255).round().to(torch.uint8), "label": label}
        if self.text_dim:
            item["text"] = torch.randn(self.text_dim, generator=torch.Generator().manual_seed(label + 17))
            item["caption"] = f"shape {label}"
        return item


@reader("synthetic")
def _build(spec: DatasetSpec) -> SyntheticShapes:
    opts = dict(spec.options)
    return SyntheticShapes(spec.resolution, n=int(opts.get("n", spec.max_items or 512)),
                           num_classes=int(opts.get("num_classes", 4)), seed=int(opts.get("seed", 0)),
                           text_dim=int(opts.get("text_dim", 0)))
