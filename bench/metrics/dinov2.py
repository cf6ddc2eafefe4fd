"""FD-DINOv2 features (Stein et al. 2023; EDM2): DINOv2 CLS token, 224 px bicubic, ImageNet normalisation.

The encoder is timm's DINOv2 ViT (same weights as the torch.hub model, loadable from one local file);
its 518-px position embedding is resampled to 224 at load time by timm. dgm-eval interpolates it at
forward time instead, which can differ in the last digits: recorded as ``resizer`` / ``loader``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class DinoV2Extractor:
    family = "dinov2"
    provides = ("pool",)
    official = None

    def __init__(self, weights: str | Path, model: str, extractor_id: str, device="cpu", image_size: int = 224,
                 **arch: int):
        import timm

        self.id, self.image_size, self.device = extractor_id, image_size, torch.device(device)
        self.net = timm.create_model(model, pretrained=True, num_classes=0, img_size=image_size,
                                     pretrained_cfg_overlay={"file": str(weights)}, **arch).to(self.device).eval()
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.device).float() / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
        return {"pool": self.net((x - self.mean) / self.std).float()}
