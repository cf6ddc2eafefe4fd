"""Multi-resolution views of one image batch (MDM's nested resolutions, simple diffusion's multiscale
loss, relay diffusion's low-resolution stage): average pooling by the integer resolution ratio."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def pool_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool a square NCHW float batch down to ``resolution`` (an integer divisor of its side)."""
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    if resolution <= 0 or h % resolution:
        raise ValueError(f"cannot average-pool {h}x{h} images to {resolution}: {h}/{resolution} is not an integer ratio")
    ratio = h // resolution
    return x if ratio == 1 else F.avg_pool2d(x, kernel_size=ratio, stride=ratio)


def resolution_views(x: torch.Tensor, resolutions: Iterable[int]) -> dict[int, torch.Tensor]:
    """{resolution: x average-pooled to it} for each requested resolution; the full one is ``x`` itself.

    Lower views are pooled from the next larger requested view, which equals pooling the original
    (box filters compose) at a fraction of the cost.
    """
    if not x.is_floating_point():
        raise ValueError(f"expected a float batch (convert uint8 with to_unit_range first), got {x.dtype}")
    out: dict[int, torch.Tensor] = {}
    src, src_res = x, x.shape[-1]
    for r in sorted({int(r) for r in resolutions}, reverse=True):
        if r > x.shape[-1]:
            raise ValueError(f"cannot make a {r}px view of {x.shape[-1]}px images (only downsampling)")
        if src_res % r == 0:
            src, src_res = pool_to(src, r), r
        else:
            src, src_res = pool_to(x, r), r  # not a divisor of the previous view: pool from the original
        out[r] = src
    return out
