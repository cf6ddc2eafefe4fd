"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): the squared MMD between the CLIP image embeddings of
generated and reference images under a Gaussian RBF kernel, as the paper's reference code computes it:

    k(x, y) = exp(−‖x − y‖² / (2σ²)),  σ = 10
    CMMD = 1000 · ( mean_{i,j} k(x_i, x_j) + mean_{i,j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j) )

with every mean over ALL pairs, the diagonal included (the biased V-statistic, not the unbiased U-statistic),
on L2-normalised embeddings of the CLIP image tower (paper: ViT-L/14 at 336 px, OpenAI weights). Sums run in
float64 over row blocks, so memory stays O(block · n) for 30k × 30k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from bench.metrics.assets import AssetFolder

SIGMA = 10.0
SCALE = 1000.0


class CmmdSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("ViT-L-14-336-quickgelu", description="open_clip model (paper: ViT-L/14@336, OpenAI weights)")
    pretrained: str = Field("openai", description="open_clip pretrained tag; weights come from the asset folder")
    sigma: float = Field(SIGMA, gt=0)
    scale: float = Field(SCALE, gt=0)


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int) -> float:
    """mean over all (i, j) of exp(−γ‖a_i − b_j‖²), float64."""
    a, b = a.double(), b.double()
    bn = (b * b).sum(1)
    total = 0.0
    for lo in range(0, a.shape[0], block):
        x = a[lo:lo + block]
        d2 = ((x * x).sum(1)[:, None] + bn[None, :] - 2.0 * x @ b.T).clamp(min=0)
        total += float(torch.exp(-gamma * d2).sum())
    return total / (a.shape[0] * b.shape[0])


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA, scale: float = SCALE, block: int = 4096) -> float:
    """Scaled squared MMD (V-statistic) between embedding sets x (n, d) and y (m, d)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"cmmd: expected (n, d) and (m, d) embeddings, got {tuple(x.shape)} and {tuple(y.shape)}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    return scale * (_kernel_mean(x, x, gamma, block) + _kernel_mean(y, y, gamma, block)
                    - 2.0 * _kernel_mean(x, y, gamma, block))


class ClipImageEmbedder:
    """L2-normalised open_clip image embeddings of uint8 NCHW images (open_clip's eval resize + crop)."""

    def __init__(self, settings: CmmdSettings, assets: AssetFolder, device: torch.device | str = "cpu"):
        from bench.metrics.clip import ClipScorer, ClipSettings

        # ClipScorer owns the weight lookup and the exact preprocessing; only its image tower is used here.
        self._scorer = ClipScorer(ClipSettings(model=settings.model, pretrained=settings.pretrained), assets, device)
        self.id = self._scorer.id
        self.settings = settings

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        s = self._scorer
        return F.normalize(s.model.encode_image(s.preprocess(images)).float(), dim=-1).cpu()


__all__ = ["cmmd", "CmmdSettings", "ClipImageEmbedder", "SIGMA", "SCALE"]
