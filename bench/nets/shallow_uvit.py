"""Networks of Greedy Growing (Vasconcelos et al. 2024; CARDS.md §6): a deep transformer core, the
shallow shell it is pretrained in, and the high-resolution shell it is grown into.

- ``TransformerCore``: the condition embedding (noise label + class / pooled text) and a deep stack of
  transformer blocks on a fixed ``grid × grid`` token grid of width ``width``. It is the part reused
  when growing, so it is its own module (it can be frozen and put in eval mode on its own).
- ``ShallowShell`` (Shallow-UViT, stage A): a stride-p p×p entry conv that reduces the grid at once,
  ONE ResBlock as encoder, the core, ONE ResBlock as decoder, a stride-p transposed-conv exit.
- ``GrownShell`` (stages B1/B2): a new high-resolution ``GrownEncoder`` (stem conv, ResBlock stages each
  ending in a stride-2 conv, the last one landing exactly on the core's grid and width) and a mirrored
  ``GrownDecoder`` (nearest ×2 + conv, ResBlocks fed the encoder's skips, zero-initialised output conv).

Token text: the core owns the caption path (TextTokens: null substitution, optional projection, masked-mean
pool added to the embedding) and cross-attends to the tokens in every transformer block; a shell computes
``context(text)`` once and passes it to ``embed`` and ``transform``, so both shells feed the core alike; their
ResBlocks see the caption through the embedding. The text modules are part of the core: reused and frozen
with it when growing.

The core has no ``forward``: a shell drives it (``embed`` then ``transform``), so one shell call is one
network evaluation (NFE) and the core is never a top-level call of its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.nets.text_cond import TextContext, TextTokens
from bench.nets.unet import ConditionEmbedding, ResBlock, group_norm, zero_init
from bench.nets.uvit import TransformerBlock


class TransformerCore(nn.Module):
    """Condition embedding + ``depth`` transformer blocks on (N, width, grid, grid) feature maps."""

    def __init__(self, grid: int, width: int, depth: int, heads: int, emb_dim: int, noise_channels: int = 128,
                 num_classes: int = 0, text_dim: int = 0, mlp_ratio: int = 4, dropout: float = 0.0,
                 text_mode: str = "pooled", text_proj_dim: int | None = None, null_text: str = "learned"):
        super().__init__()
        self.grid, self.width, self.emb_dim = grid, width, emb_dim
        tokens = bool(text_dim) and text_mode == "tokens"
        self.text_tokens = TextTokens(text_dim, text_proj_dim, null_text) if tokens else None
        ctx_dim = self.text_tokens.dim if tokens else 0
        self.embedding = ConditionEmbedding(noise_channels, emb_dim, num_classes, ctx_dim or text_dim)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(width, heads, emb_dim, mlp_ratio, dropout, ctx_dim)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def context(self, text: torch.Tensor | None) -> TextContext | None:
        """The caption's TextContext when the core cross-attends to tokens, else None."""
        if self.text_tokens is None:
            return None
        if text is None:
            raise ValueError("this core cross-attends to caption tokens: pass text (N, L, D)")
        return self.text_tokens(text)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
              text: torch.Tensor | None = None, ctx: TextContext | None = None) -> torch.Tensor:
        if ctx is None:
            ctx = self.context(text)
        return self.embedding(noise_labels, class_labels, ctx.pooled if ctx is not None else text)

    def transform(self, h: torch.Tensor, emb: torch.Tensor, ctx: TextContext | None = None) -> torch.Tensor:
        n, c, gh, gw = h.shape
        if (c, gh, gw) != (self.width, self.grid, self.grid):
            raise ValueError(f"core expects (N, {self.width}, {self.grid}, {self.grid}) features, got {tuple(h.shape)}")
        tokens = h.flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            tokens = block(tokens, emb, ctx)
        return self.norm(tokens).transpose(1, 2).reshape(n, c, gh, gw)


class ShallowShell(nn.Module):
    """Stage A: Conv_{p×p, stride p} → ResBlock → core → ResBlock → ConvT_{stride p} (zero-init)."""

    def __init__(self, channels: int, width: int, patch: int, emb_dim: int):
        super().__init__()
        self.entry = nn.Conv2d(channels, width, patch, stride=patch)
        self.encoder = ResBlock(width, width, emb_dim)
        self.decoder = ResBlock(width, width, emb_dim)
        self.norm_out = group_norm(width)
        self.exit = zero_init(nn.ConvTranspose2d(width, channels, patch, stride=patch))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                text: torch.Tensor | None, core: TransformerCore) -> torch.Tensor:
        ctx = core.context(text)
        emb = core.embed(noise_labels, class_labels, text, ctx)
        h = self.encoder(self.entry(x), emb)
        h = self.decoder(core.transform(h, emb, ctx), emb)
        return self.exit(F.silu(self.norm_out(h)))


class GrownEncoder(nn.Module):
    """Stem conv at the image resolution, then per entry of ``widths``: ``num_blocks`` ResBlocks and a
    stride-2 conv to the next width (the last one to ``core_width``). Returns (core-grid features, skips)."""

    def __init__(self, channels: int, widths: tuple[int, ...], num_blocks: int, core_width: int, emb_dim: int):
        super().__init__()
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.skip_widths: list[int] = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(ResBlock(c, w, emb_dim))
                c = w
                self.skip_widths.append(c)
            self.stages.append(blocks)
            nxt = widths[i + 1] if i + 1 < len(widths) else core_width
            self.downs.append(nn.Conv2d(c, nxt, 3, stride=2, padding=1))
            c = nxt

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, skips = self.stem(x), []
        for blocks, down in zip(self.stages, self.downs):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        return h, skips


class GrownDecoder(nn.Module):
    """Mirror of :class:`GrownEncoder`: nearest ×2 + conv, ResBlocks on [h, skip], zero-init output conv."""

    def __init__(self, channels: int, widths: tuple[int, ...], num_blocks: int, core_width: int, emb_dim: int,
                 skip_widths: list[int]):
        super().__init__()
        skips = list(skip_widths)
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        c = core_width
        for w in reversed(widths):
            self.ups.append(nn.Conv2d(c, w, 3, padding=1))
            c = w
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(ResBlock(c + skips.pop(), w, emb_dim))
                c = w
            self.stages.append(blocks)
        self.norm_out = group_norm(c)
        self.conv_out = zero_init(nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        skips = list(skips)
        for up, blocks in zip(self.ups, self.stages):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class GrownShell(nn.Module):
    """Stages B1/B2: high-resolution encoder → core → decoder with U-Net skips."""

    def __init__(self, channels: int, widths: tuple[int, ...], num_blocks: int, core_width: int, emb_dim: int):
        super().__init__()
        self.encoder = GrownEncoder(channels, widths, num_blocks, core_width, emb_dim)
        self.decoder = GrownDecoder(channels, widths, num_blocks, core_width, emb_dim, self.encoder.skip_widths)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                text: torch.Tensor | None, core: TransformerCore) -> torch.Tensor:
        ctx = core.context(text)
        emb = core.embed(noise_labels, class_labels, text, ctx)
        h, skips = self.encoder(x, emb)
        return self.decoder(core.transform(h, emb, ctx), skips, emb)


__all__ = ["TransformerCore", "ShallowShell", "GrownEncoder", "GrownDecoder", "GrownShell"]
