"""CLIP score via open_clip, with every convention explicit (metrics.md §2.8).

score_i = scale * cos(image_i, text_i); clamp: "per_sample" (Hessel et al.: max(.,0) per image),
"mean" (torchmetrics: max(mean, 0)), or "none" (GigaGAN: raw cosine with scale 1).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from bench.method import ConfigError
from bench.metrics.assets import AssetFolder, clip_spec, weights_id


class ClipSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("ViT-L-14-quickgelu", description="open_clip model name (use -quickgelu for OpenAI weights)")
    pretrained: str = Field("openai", description="open_clip pretrained tag; weights come from the asset folder")
    scale: float = 100.0
    clamp: Literal["per_sample", "mean", "none"] = "per_sample"
    prefix: str = Field("", description="prepended to every caption, e.g. 'A photo depicts '")


def reduce_scores(cos: torch.Tensor, scale: float, clamp: str) -> float:
    s = scale * cos.double()
    if clamp == "per_sample":
        return float(s.clamp(min=0).mean())
    if clamp == "mean":
        return float(s.mean().clamp(min=0))
    return float(s.mean())


class ClipScorer:
    """Streams (images, captions) through an open_clip model; keeps only a running sum of cosines."""

    def __init__(self, settings: ClipSettings, assets: AssetFolder, device: torch.device | str = "cpu"):
        import open_clip

        self.settings = settings
        path, entry = assets.require(clip_spec(settings.model, settings.pretrained))
        self.id = weights_id(f"open_clip:{settings.model}:{settings.pretrained}", entry)
        self.device = torch.device(device)
        self.model = open_clip.create_model(settings.model, pretrained=str(path), device=self.device,
                                             weights_only=True).eval()
        self.tokenizer = open_clip.get_tokenizer(settings.model)
        v = self.model.visual
        size = v.image_size if isinstance(v.image_size, int) else v.image_size[0]
        self.image_size = int(size)
        self.mean = torch.tensor(getattr(v, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN,
                                 device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(v, "image_std", None) or open_clip.OPENAI_DATASET_STD,
                                device=self.device).view(1, 3, 1, 1)
        self._cos: list[torch.Tensor] = []

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform on tensors: shortest side to image_size (bicubic, antialias), centre crop."""
        x = images.to(self.device).float() / 255.0
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        nh, nw = max(self.image_size, round(h * s)), max(self.image_size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def cosines(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if len(captions) != images.shape[0]:
            raise ValueError(f"CLIP score: {images.shape[0]} images but {len(captions)} captions")
        img = F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)
        tok = self.tokenizer([self.settings.prefix + str(c) for c in captions]).to(self.device)
        txt = F.normalize(self.model.encode_text(tok).float(), dim=-1)
        return (img * txt).sum(-1).cpu()

    def update(self, images: torch.Tensor, captions: Sequence[str] | None) -> None:
        if captions is None:
            raise ConfigError("metric 'clip' needs captions: evaluate text-conditioned samples "
                              "(npz with a 'captions' array, or a run with text conditioning)")
        self._cos.append(self.cosines(images, captions))

    def result(self) -> dict:
        cos = torch.cat(self._cos)
        return {"clip_score": reduce_scores(cos, self.settings.scale, self.settings.clamp),
                "clip_n": int(cos.numel()), "clip_settings": {**self.settings.model_dump(), "weights": self.id,
                                                              "resizer": "torch-bicubic-antialias+center-crop"}}
