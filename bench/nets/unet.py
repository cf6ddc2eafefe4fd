"""ADM / EDM-style UNet (Dhariwal & Nichol 2021; EDM's DhariwalUNet), sized by config.

Pieces: sinusoidal noise embedding -> MLP; class labels (with a learned null class for CFG) and pooled
caption embeddings are added to the embedding; ResBlocks with AdaGN (scale-shift norm), optional
BigGAN-style up/down-sampling inside the block; self-attention at chosen resolutions; dropout that can
be limited to low resolutions (simple diffusion's placement). Output convs are zero-initialised so a
fresh network predicts 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8,)
    channels_per_head: int = 32
    dropout: float = 0.0
    dropout_max_res: int | None = None   # dropout only where feature resolution <= this (None: everywhere)
    resample: str = "biggan"             # "biggan": ResBlock up/down; "conv": strided conv / nearest+conv
    emb_mult: int = 4                    # embedding width = emb_mult * model_channels


# Architectures of CARDS.md (ADM configurations; EDM trains ImageNet-64 on the ADM one).
UNET_PRESETS: dict[str, dict] = {
    "cpu-tiny": dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                     channels_per_head=32, dropout=0.1),
    "adm64": dict(model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
                  channels_per_head=64, dropout=0.1),
    "adm128": dict(model_channels=256, channel_mult=(1, 1, 2, 3, 4), num_blocks=2, attn_resolutions=(32, 16, 8),
                   channels_per_head=64, dropout=0.0),
    "adm256": dict(model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_blocks=2,
                   attn_resolutions=(32, 16, 8), channels_per_head=64, dropout=0.0),
}


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups (ADM) for wide layers; at least 4 channels per group for narrow (CPU-tiny) ones: with one
    channel per group GroupNorm removes each channel's mean and the bias feeding it gets no gradient."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a real-valued noise label (c_noise, logSNR, integer t, ...)."""

    def __init__(self, dim: int, max_positions: int = 10_000):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_positions) * torch.arange(half) / half),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = x.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.cos(), args.sin()], dim=1)


class Resample(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x


class ResBlock(nn.Module):
    """GN-SiLU-conv, AdaGN from the embedding ((1+scale)·GN(h)+shift), SiLU, dropout, zero-init conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, resample: str | None = None):
        super().__init__()
        self.norm0, self.conv0 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.resample = Resample(resample or "none")
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.resample(F.silu(self.norm0(x)))
        h = self.conv0(h)
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return h + self.skip(self.resample(x))


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, channels_per_head: int = 64):
        super().__init__()
        self.heads = max(1, channels // channels_per_head)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionEmbedding(nn.Module):
    """Noise label + class label (index num_classes = null / dropped) + pooled text -> embedding."""

    def __init__(self, model_channels: int, emb_dim: int, num_classes: int = 0, text_dim: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.pos = PositionalEmbedding(model_channels)
        self.mlp = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.text = nn.Linear(text_dim, emb_dim) if text_dim else None

    def forward(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.mlp(self.pos(noise_labels.reshape(-1)))
        if self.label is not None:
            if class_labels is None:
                class_labels = torch.full((emb.shape[0],), -1, device=emb.device, dtype=torch.long)
            idx = torch.where(class_labels < 0, torch.full_like(class_labels, self.num_classes), class_labels)
            emb = emb + self.label(idx)
        if self.text is not None and text is not None:
            t = text.mean(dim=1) if text.ndim == 3 else text      # pooled caption embedding
            emb = emb + self.text(t.to(emb.dtype))
        return F.silu(emb)


class UNet(nn.Module):
    """forward(x, noise_labels, class_labels=None, text=None) -> same shape as x (out_channels)."""

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, num_classes: int = 0,
                 text_dim: int = 0, config: UNetConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or UNetConfig()).model_copy(update=overrides)
        self.config, self.resolution = cfg, resolution
        mc = cfg.model_channels
        emb_dim = cfg.emb_mult * mc
        self.embed = ConditionEmbedding(mc, emb_dim, num_classes, text_dim)
        n_levels = len(cfg.channel_mult)
        if resolution % (2 ** (n_levels - 1)):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{n_levels - 1} (channel_mult levels)")

        def drop(res: int) -> float:
            return cfg.dropout if cfg.dropout_max_res is None or res <= cfg.dropout_max_res else 0.0

        def downsampler(c: int, res: int) -> nn.Module:
            return ResBlock(c, c, emb_dim, drop(res), "down") if cfg.resample == "biggan" else Downsample(c)

        def upsampler(c: int, res: int) -> nn.Module:
            return ResBlock(c, c, emb_dim, drop(res), "up") if cfg.resample == "biggan" else Upsample(c)

        self.conv_in = nn.Conv2d(in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [mc]
        c, res = mc, resolution
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                self.down.append(downsampler(c, res))
                res //= 2
                skips.append(c)
            for _ in range(cfg.num_blocks):
                layers = [ResBlock(c, mc * mult, emb_dim, drop(res))]
                c = mc * mult
                if res in cfg.attn_resolutions:
                    layers.append(AttentionBlock(c, cfg.channels_per_head))
                self.down.append(nn.ModuleList(layers))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, drop(res)), AttentionBlock(c, cfg.channels_per_head),
                                  ResBlock(c, c, emb_dim, drop(res))])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_blocks + 1):
                layers = [ResBlock(c + skips.pop(), mc * mult, emb_dim, drop(res))]
                c = mc * mult
                if res in cfg.attn_resolutions:
                    layers.append(AttentionBlock(c, cfg.channels_per_head))
                self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.up.append(upsampler(c, res))
                res *= 2
        self.norm_out = group_norm(c)
        self.conv_out = zero_init(nn.Conv2d(c, out_channels, 3, padding=1))
        self.out_width = c

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.ModuleList):
            for sub in layer:
                h = sub(h, emb)
            return h
        return layer(h, emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, return_features: bool = False,
                inject: torch.Tensor | None = None):
        """``inject`` is added to the conv_in features (how an outer level feeds a nested inner UNet)."""
        emb = self.embed(noise_labels, class_labels, text)
        h = self.conv_in(x)
        if inject is not None:
            h = h + inject
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, h) if return_features else out


def build_unet(resolution: int, preset: str | dict | UNetConfig = "cpu-tiny", in_channels: int = 3,
               out_channels: int = 3, num_classes: int = 0, text_dim: int = 0, **overrides) -> UNet:
    if isinstance(preset, str):
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; presets: {', '.join(UNET_PRESETS)}")
        cfg = UNetConfig(**UNET_PRESETS[preset])
    elif isinstance(preset, dict):
        cfg = UNetConfig(**preset)
    else:
        cfg = preset
    return UNet(resolution, in_channels, out_channels, num_classes, text_dim, cfg, **overrides)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__: Sequence[str] = ["UNet", "UNetConfig", "UNET_PRESETS", "build_unet", "ResBlock", "AttentionBlock",
                          "ConditionEmbedding", "PositionalEmbedding", "zero_init", "group_norm", "count_params"]
