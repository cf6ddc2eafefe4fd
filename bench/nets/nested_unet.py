"""NestedUNet of Matryoshka Diffusion Models (Gu et al. 2023; CARDS.md §4).

A base UNet (bench.nets.unet.UNet) at the lowest resolution is wrapped by outer levels, each a
ResBlock encoder / decoder without attention that works at ``nest_ratio`` times the resolution of
the level inside it:

    x_t^high -> conv_in -> down stages -> bottleneck h
                                          |-- in_adapter(h) (zero-init 3x3) is added to the inner
                                          |   level's conv_in(x_t^low) features
                                          |   inner level runs -> (its outputs, its pre-output features f)
                h + out_adapter(f) (zero-init 3x3) -> up stages with skips -> conv_out -> out^high

Recursion gives three (or more) levels. Outputs come back highest resolution first. With zero
adapters the inner levels compute exactly what they compute alone, so a grown model starts from the
previous stage's function (progressive training).

Conditioning: each outer level has its own sinusoidal time embedding (of the raw integer time index)
plus the condition vector of the base UNet (class embedding, pooled caption projection) — MDM's outer
levels re-use the inner model's condition embedding instead of building their own
(``skip_cond_emb``). Their embedding width therefore equals the base UNet's. With token text the base
UNet's TextContext (null substitution, projection, masked-mean pool) is computed once per call; the
outer levels (attention-free, as released) see the caption only through that pooled vector.

Mixed batches (MDM ``mixed_ratio``): an outer level may receive fewer examples than the level inside
it; its examples are a prefix of the inner level's batch. The inner level's injected features are
zero-padded for the extra examples, and the out-adapter reads only the prefix.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from bench.nets.text_cond import TextContext, masked_mean, token_mask
from bench.nets.unet import (ConditionEmbedding, Downsample, PositionalEmbedding, ResBlock, UNet, Upsample,
                             group_norm, zero_init)


class OuterLevelConfig(BaseModel):
    """One outer level. ``channels`` per resolution stage (its highest first); the level halves the
    resolution between stages, so its nest ratio is 2^(len(channels) - 1)."""

    model_config = ConfigDict(extra="forbid")

    channels: tuple[int, ...] = (32, 64)
    num_blocks: tuple[int, ...] = (1, 1)       # ResBlocks per stage going down (going up: +1 each)
    dropout: float = 0.0
    normalize_input: bool = False              # divide x_t by its per-sample std (MDM skip_normalization: false)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or any(c <= 0 for c in v):
            raise ValueError("expected at least two positive widths (one per resolution stage)")
        return v

    @model_validator(mode="after")
    def _blocks(self) -> "OuterLevelConfig":
        if len(self.num_blocks) != len(self.channels) or any(b < 1 for b in self.num_blocks):
            raise ValueError(f"num_blocks: expected {len(self.channels)} entries >= 1 (one per entry of channels), "
                             f"got {list(self.num_blocks)}")
        return self

    @property
    def nest_ratio(self) -> int:
        return 2 ** (len(self.channels) - 1)


def unet_forward(unet: UNet, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                 text: torch.Tensor | None = None, inject: torch.Tensor | None = None,
                 context: TextContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, pre-output features) of the base UNet with ``inject`` added to its conv_in features."""
    return unet(x, noise_labels, class_labels, text, return_features=True, inject=inject, context=context)


def condition_vector(embed: ConditionEmbedding, n: int, class_labels: torch.Tensor | None,
                     text: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The class + pooled-caption part of the base UNet's embedding (no time), for the outer levels.
    Uses the same null-class convention as ConditionEmbedding (label < 0 = dropped)."""
    out = None
    if embed.label is not None:
        if class_labels is None:
            class_labels = torch.full((n,), -1, device=like.device, dtype=torch.long)
        idx = torch.where(class_labels < 0, torch.full_like(class_labels, embed.num_classes), class_labels)
        out = embed.label(idx)
    if embed.text is not None and text is not None:
        pooled = masked_mean(text, token_mask(text)) if text.ndim == 3 else text
        t = embed.text(pooled.to(like.dtype))
        out = t if out is None else out + t
    return out


class OuterLevel(nn.Module):
    """Encoder/decoder around an inner level (no attention, no middle blocks)."""

    def __init__(self, cfg: OuterLevelConfig, in_channels: int, out_channels: int, emb_dim: int, inner_width: int):
        super().__init__()
        self.config = cfg
        ch = cfg.channels
        self.pos = PositionalEmbedding(max(emb_dim // 4, 2))
        self.time_mlp = nn.Sequential(nn.Linear(max(emb_dim // 4, 2), emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for i, width in enumerate(ch):
            for _ in range(cfg.num_blocks[i]):
                self.down.append(ResBlock(c, width, emb_dim, cfg.dropout))
                c = width
                skips.append(c)
            if i < len(ch) - 1:
                self.down.append(Downsample(c))
                skips.append(c)
        # The adapters start at zero: the inner level first behaves exactly as if alone.
        self.in_adapter = zero_init(nn.Conv2d(c, inner_width, 3, padding=1))
        self.out_adapter = zero_init(nn.Conv2d(inner_width, c, 3, padding=1))
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch))):
            for _ in range(cfg.num_blocks[i] + 1):
                self.up.append(ResBlock(c + skips.pop(), ch[i], emb_dim, cfg.dropout))
                c = ch[i]
            if i > 0:
                self.up.append(Upsample(c))
        self.norm_out = group_norm(c)
        self.conv_out = zero_init(nn.Conv2d(c, out_channels, 3, padding=1))
        self.out_width = c

    def embed(self, noise_labels: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_mlp(self.pos(noise_labels.reshape(-1)))
        if cond is not None:
            emb = emb + cond
        return F.silu(emb)

    def encode(self, x: torch.Tensor, emb: torch.Tensor, inject: torch.Tensor | None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.config.normalize_input:
            x = x / x.std(dim=(1, 2, 3), keepdim=True)
        h = self.conv_in(x)
        if inject is not None:
            h = h + inject
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            skips.append(h)
        return h, skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb)
        return self.conv_out(F.silu(self.norm_out(h))), h


def _pad_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[0] == n:
        return x
    return torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])


class NestedUNet(nn.Module):
    """A base UNet at ``resolutions[-1]`` wrapped by outer levels up to ``resolutions[0]``.

    ``outer[k]`` is the level directly around level k (``outer[0]`` wraps the base UNet; the last is
    the outermost). ``forward(xs, t, labels, text)`` takes the noisy inputs of the ``len(xs)`` lowest
    levels, highest resolution first, and returns their outputs in the same order. A call with one
    input runs the base UNet alone.
    """

    def __init__(self, base: UNet, outer_configs: Sequence[OuterLevelConfig], in_channels: int = 3,
                 out_channels: int = 3):
        super().__init__()
        self.base = base
        emb_dim = base.embed.mlp[-1].out_features
        self.outer = nn.ModuleList()
        inner_width = base.out_width
        res = [base.resolution]
        for cfg in outer_configs:
            level = OuterLevel(cfg, in_channels, out_channels, emb_dim, inner_width)
            self.outer.append(level)
            inner_width = level.out_width
            res.insert(0, res[0] * cfg.nest_ratio)
        self.resolutions: tuple[int, ...] = tuple(res)      # highest first

    @property
    def num_levels(self) -> int:
        return len(self.outer) + 1

    def forward(self, xs: Sequence[torch.Tensor], noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> list[torch.Tensor]:
        xs = list(xs)
        depth = len(xs)
        if not 1 <= depth <= self.num_levels:
            raise ValueError(f"NestedUNet: expected 1..{self.num_levels} inputs, got {depth}")
        want = self.resolutions[self.num_levels - depth:]
        got = tuple(int(x.shape[-1]) for x in xs)
        if got != want:
            raise ValueError(f"NestedUNet: inputs have resolutions {got}, expected {want} (highest first)")
        sizes = [x.shape[0] for x in xs]
        if any(a > b for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"NestedUNet: batch sizes {sizes} must not grow towards higher resolutions "
                             "(a higher level sees a prefix of the lower level's batch)")
        n = sizes[-1]
        noise_labels = noise_labels.reshape(-1).expand(n) if noise_labels.numel() == 1 else noise_labels
        ctx = self.base.text_context(text)
        pooled = ctx.pooled if ctx is not None else text
        cond = condition_vector(self.base.embed, n, class_labels, pooled, xs[-1]) if depth > 1 else None
        outs, _ = self._run(depth, xs, noise_labels, class_labels, text, cond, None, ctx)
        return outs

    def _run(self, depth: int, xs: list[torch.Tensor], t: torch.Tensor, labels: torch.Tensor | None,
             text: torch.Tensor | None, cond: torch.Tensor | None, inject: torch.Tensor | None,
             ctx: TextContext | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        if depth == 1:
            out, feat = unet_forward(self.base, xs[0], t, labels, text, inject, ctx)
            return [out], feat
        level = self.outer[depth - 2]
        n_hi, n_lo = xs[0].shape[0], xs[1].shape[0]
        emb = level.embed(t[:n_hi], None if cond is None else cond[:n_hi])
        h, skips = level.encode(xs[0], emb, inject)
        to_inner = _pad_batch(level.in_adapter(h), n_lo)      # zero features for low-res-only examples
        outs, feat = self._run(depth - 1, xs[1:], t, labels, text, cond, to_inner, ctx)
        h = h + level.out_adapter(feat[:n_hi])
        out, feat_hi = level.decode(h, skips, emb)
        return [out] + outs, feat_hi

    def adapters(self) -> list[nn.Module]:
        return [m for level in self.outer for m in (level.in_adapter, level.out_adapter)]


__all__ = ["OuterLevelConfig", "OuterLevel", "NestedUNet", "unet_forward", "condition_vector"]
