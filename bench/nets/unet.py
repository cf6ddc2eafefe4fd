"""ADM / EDM-style UNet (Dhariwal & Nichol 2021; EDM's DhariwalUNet), sized by config.

Pieces: sinusoidal noise embedding -> MLP; class labels (with a learned null class for CFG) and pooled
caption embeddings are added to the embedding; ResBlocks with AdaGN (scale-shift norm), optional
BigGAN-style up/down-sampling inside the block; self-attention at chosen resolutions; dropout that can
be limited to low resolutions (simple diffusion's placement). Output convs are zero-initialised so a
fresh network predicts 0.

Token text conditioning (``text_mode="tokens"``, MDM's inner UNet): caption tokens (N, L, text_dim) are
optionally projected (``text_proj_dim``, MDM ``lm_proj``), their masked mean is added to the embedding, and
every attention block also cross-attends to them (shared queries, self- + cross-attention outputs summed
before the zero-init output projection, as MDM's SelfAttention), optionally followed by an attention FFN
(GN → 1×1 conv 4C → GELU → zero-init 1×1 conv, residual). ``attn_layers`` stacks several attention blocks
per ResBlock at a resolution (MDM 256: 1 at 32×32, 5 at 16×16).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from bench.nets.text_cond import CrossAttention, TextContext, TextTokens, masked_mean, token_mask


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
    attn_layers: tuple[int, ...] | None = None   # attention blocks per ResBlock, one entry per attn_resolutions
    attention_ffn: bool = False          # MDM use_attention_ffn: an FFN after each attention block
    text_proj_dim: int | None = None     # tokens: project caption tokens to this width first (MDM lm_proj)
    null_text: str = "learned"           # tokens: null sequence of dropped captions (bench.nets.text_cond)


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
    """Self-attention over the feature map; with ``context_dim`` also cross-attention to caption tokens
    (same queries, outputs summed); with ``ffn`` an attention FFN after it."""

    def __init__(self, channels: int, channels_per_head: int = 64, context_dim: int = 0, ffn: bool = False):
        super().__init__()
        self.heads = max(1, channels // channels_per_head)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.cross = CrossAttention(channels, context_dim, self.heads) if context_dim else None
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        self.ffn = nn.Sequential(group_norm(channels), nn.Conv2d(channels, 4 * channels, 1), nn.GELU(),
                                 zero_init(nn.Conv2d(4 * channels, channels, 1))) if ffn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, ctx: TextContext | None = None
                ) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        q = q.transpose(-1, -2)
        out = F.scaled_dot_product_attention(q, k.transpose(-1, -2), v.transpose(-1, -2))
        if self.cross is not None:
            if ctx is None:
                raise ValueError("this attention block cross-attends to caption tokens: pass text")
            out = out + self.cross(q, ctx)
        x = x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))
        return x + self.ffn(x) if self.ffn is not None else x


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
            t = masked_mean(text, token_mask(text)) if text.ndim == 3 else text   # pooled caption embedding
            emb = emb + self.text(t.to(emb.dtype))
        return F.silu(emb)


class UNet(nn.Module):
    """forward(x, noise_labels, class_labels=None, text=None) -> same shape as x (out_channels)."""

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, num_classes: int = 0,
                 text_dim: int = 0, config: UNetConfig | None = None, text_mode: str = "pooled", **overrides):
        super().__init__()
        cfg = UNetConfig.model_validate({**(config or UNetConfig()).model_dump(), **overrides})
        self.config, self.resolution = cfg, resolution
        mc = cfg.model_channels
        emb_dim = cfg.emb_mult * mc
        if cfg.attn_layers is not None and len(cfg.attn_layers) != len(cfg.attn_resolutions):
            raise ValueError(f"attn_layers {list(cfg.attn_layers)}: expected one entry per attn_resolutions "
                             f"{list(cfg.attn_resolutions)}")
        n_attn = dict(zip(cfg.attn_resolutions, cfg.attn_layers or [1] * len(cfg.attn_resolutions)))
        tokens = bool(text_dim) and text_mode == "tokens"
        self.text_tokens = TextTokens(text_dim, cfg.text_proj_dim, cfg.null_text) if tokens else None
        ctx_dim = self.text_tokens.dim if tokens else 0
        self.embed = ConditionEmbedding(mc, emb_dim, num_classes, ctx_dim or text_dim)

        def attention(c: int) -> list[nn.Module]:
            return [AttentionBlock(c, cfg.channels_per_head, ctx_dim, cfg.attention_ffn)]
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
                for _ in range(n_attn.get(res, 0)):
                    layers += attention(c)
                self.down.append(nn.ModuleList(layers))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, drop(res)), *attention(c), ResBlock(c, c, emb_dim, drop(res))])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_blocks + 1):
                layers = [ResBlock(c + skips.pop(), mc * mult, emb_dim, drop(res))]
                c = mc * mult
                for _ in range(n_attn.get(res, 0)):
                    layers += attention(c)
                self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.up.append(upsampler(c, res))
                res *= 2
        self.norm_out = group_norm(c)
        self.conv_out = zero_init(nn.Conv2d(c, out_channels, 3, padding=1))
        self.out_width = c

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, ctx: TextContext | None = None) -> torch.Tensor:
        for sub in (layer if isinstance(layer, nn.ModuleList) else [layer]):
            h = sub(h, emb, ctx) if isinstance(sub, AttentionBlock) else sub(h, emb)
        return h

    def text_context(self, text: torch.Tensor | None) -> TextContext | None:
        """The caption's TextContext (tokens mode), else None (pooled text goes straight to the embedding)."""
        if self.text_tokens is None or text is None:
            return None
        return self.text_tokens(text)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, return_features: bool = False,
                inject: torch.Tensor | None = None, context: TextContext | None = None):
        """``inject`` is added to the conv_in features (how an outer level feeds a nested inner UNet);
        ``context`` is a precomputed text_context(text) (the NestedUNet computes it once for all levels)."""
        ctx = context if context is not None else self.text_context(text)
        if self.text_tokens is not None and ctx is None:
            raise ValueError("this UNet cross-attends to caption tokens: pass text (N, L, D)")
        emb = self.embed(noise_labels, class_labels, ctx.pooled if ctx is not None else text)
        h = self.conv_in(x)
        if inject is not None:
            h = h + inject
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, ctx)
            skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb, ctx)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb, ctx)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, h) if return_features else out


def build_unet(resolution: int, preset: str | dict | UNetConfig = "cpu-tiny", in_channels: int = 3,
               out_channels: int = 3, num_classes: int = 0, text_dim: int = 0, text_mode: str = "pooled",
               **overrides) -> UNet:
    if isinstance(preset, str):
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; presets: {', '.join(UNET_PRESETS)}")
        cfg = UNetConfig(**UNET_PRESETS[preset])
    elif isinstance(preset, dict):
        cfg = UNetConfig(**preset)
    else:
        cfg = preset
    return UNet(resolution, in_channels, out_channels, num_classes, text_dim, cfg, text_mode, **overrides)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__: Sequence[str] = ["UNet", "UNetConfig", "UNET_PRESETS", "build_unet", "ResBlock", "AttentionBlock",
                          "ConditionEmbedding", "PositionalEmbedding", "zero_init", "group_norm", "count_params"]
