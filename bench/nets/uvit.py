"""U-ViT of simple diffusion (Hoogeboom, Heek, Salimans 2023; CARDS.md §3) and its input transforms.

Shape: [input transform] → conv stem → conv ResBlock stages going down (one per entry of ``channels``,
each followed by a stride-2 conv) → a transformer stack on the lowest grid (the paper's 16×16) → the
mirrored up path (nearest + conv, ResBlocks fed the down path's skips) → output conv → [inverse transform].

Input transforms for high resolution (the network never sees the full-resolution grid):
- ``haar`` / ``legall53``: ``levels`` levels of an invertible 2-D DWT, sub-bands concatenated on channels
  (C → 4C per level, res → res/2); the network predicts the sub-bands and the inverse DWT maps them back.
  Levels after the first transform every sub-band again (a wavelet packet), so all bands keep one size.
- ``patch``: a stride-p p×p conv in, a stride-p transposed conv out.

Dropout only where the feature grid is at most ``dropout_max_res`` and never on the top-resolution grid.
Transformer blocks are pre-LayerNorm with scale/shift from the conditioning embedding (adaLN) and
zero-initialised residual projections, so a fresh block is the identity.

Token text (``text_mode="tokens"``): every transformer block gets a pre-LN cross-attention sub-layer onto
the caption tokens (key padding mask honoured, zero-init output projection) between self-attention and
MLP; the masked-mean pooled caption is also added to the conditioning embedding. The conv stages see the
caption only through that embedding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from bench.nets.text_cond import CrossAttention, TextContext, TextTokens
from bench.nets.unet import ConditionEmbedding, Downsample, ResBlock, Upsample, group_norm, zero_init

INPUT_TRANSFORMS = ("none", "haar", "legall53", "patch")


# ---- invertible wavelet transforms (separable, along one dim) ------------------------------------

def _split_even_odd(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[dim] % 2:
        raise ValueError(f"DWT: size {x.shape[dim]} along dim {dim} is odd; expected an even size")
    idx = torch.arange(x.shape[dim], device=x.device)
    return x.index_select(dim, idx[0::2]), x.index_select(dim, idx[1::2])


def _interleave(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % even.ndim
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def _shift(x: torch.Tensor, dim: int, forward: bool) -> torch.Tensor:
    """Neighbour along ``dim`` with whole-sample symmetric extension at the end that runs out:
    forward → x[n+1] (last repeats), backward → x[n−1] (first repeats)."""
    n = x.shape[dim]
    if forward:
        return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    return torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)


def haar_1d(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal Haar: lo = (x₀ + x₁)/√2, hi = (x₀ − x₁)/√2 over pairs along ``dim``."""
    e, o = _split_even_odd(x, dim)
    return (e + o) * math.sqrt(0.5), (e - o) * math.sqrt(0.5)


def ihaar_1d(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> torch.Tensor:
    return _interleave((lo + hi) * math.sqrt(0.5), (lo - hi) * math.sqrt(0.5), dim)


def legall53_1d(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LeGall 5/3 (JPEG 2000 reversible filter without rounding) by lifting, symmetric extension:
    d[n] = x[2n+1] − (x[2n] + x[2n+2])/2 ; s[n] = x[2n] + (d[n−1] + d[n])/4.
    Low-pass = (−1, 2, 6, 2, −1)/8 (DC gain 1), high-pass = (−1, 2, −1)/2."""
    e, o = _split_even_odd(x, dim)
    d = o - 0.5 * (e + _shift(e, dim, True))
    s = e + 0.25 * (_shift(d, dim, False) + d)
    return s, d


def ilegall53_1d(s: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    e = s - 0.25 * (_shift(d, dim, False) + d)
    o = d + 0.5 * (e + _shift(e, dim, True))
    return _interleave(e, o, dim)


_WAVELETS = {"haar": (haar_1d, ihaar_1d), "legall53": (legall53_1d, ilegall53_1d)}


def dwt2d(x: torch.Tensor, wavelet: str = "haar") -> torch.Tensor:
    """One 2-D DWT level: (N, C, H, W) → (N, 4C, H/2, W/2), bands [LL, LH, HL, HH] (vertical filter
    first letter, horizontal second), each band C channels."""
    fwd, _ = _WAVELETS[wavelet]
    lo_w, hi_w = fwd(x, -1)
    ll, hl = fwd(lo_w, -2)
    lh, hh = fwd(hi_w, -2)
    return torch.cat([ll, lh, hl, hh], dim=1)


def idwt2d(y: torch.Tensor, wavelet: str = "haar") -> torch.Tensor:
    """Inverse of :func:`dwt2d`."""
    _, inv = _WAVELETS[wavelet]
    ll, lh, hl, hh = y.chunk(4, dim=1)
    return inv(inv(ll, hl, -2), inv(lh, hh, -2), -1)


class DWT(nn.Module):
    """``levels`` DWT levels (wavelet packet), a parameter-free invertible map."""

    def __init__(self, wavelet: str = "haar", levels: int = 1):
        super().__init__()
        if wavelet not in _WAVELETS:
            raise ValueError(f"wavelet: expected one of {', '.join(_WAVELETS)}, got {wavelet!r}")
        self.wavelet, self.levels = wavelet, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            x = dwt2d(x, self.wavelet)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            y = idwt2d(y, self.wavelet)
        return y


# ---- transformer --------------------------------------------------------------------------------

class TransformerBlock(nn.Module):
    """Pre-LN self-attention + MLP on (N, L, W) tokens; adaLN scale/shift from the embedding."""

    def __init__(self, width: int, heads: int, emb_dim: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 context_dim: int = 0):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(emb_dim, 4 * width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = zero_init(nn.Linear(width, width))
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = zero_init(nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)
        if context_dim:    # built last so pooled-text and unconditional blocks keep their initialisation
            self.norm_cross = nn.LayerNorm(width, eps=1e-6)
            self.q_cross = nn.Linear(width, width)
            self.cross = CrossAttention(width, context_dim, heads)
            self.proj_cross = zero_init(nn.Linear(width, width))
        else:
            self.cross = None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, ctx: TextContext | None = None) -> torch.Tensor:
        n, length, w = h.shape
        scale1, shift1, scale2, shift2 = self.modulation(emb)[:, None, :].chunk(4, dim=-1)
        a = torch.addcmul(shift1, self.norm1(h), scale1 + 1)
        q, k, v = self.qkv(a).reshape(n, length, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, w)
        h = h + self.dropout(self.proj(att))
        if self.cross is not None:
            if ctx is None:
                raise ValueError("this transformer block cross-attends to caption tokens: pass text")
            qc = self.q_cross(self.norm_cross(h)).reshape(n, length, self.heads, w // self.heads).transpose(1, 2)
            c = self.cross(qc, ctx).transpose(1, 2).reshape(n, length, w)
            h = h + self.dropout(self.proj_cross(c))
        m = torch.addcmul(shift2, self.norm2(h), scale2 + 1)
        return h + self.fc2(self.dropout(F.gelu(self.fc1(m))))


# ---- the U-ViT ----------------------------------------------------------------------------------

class UViTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: tuple[int, ...] = Field((64,), min_length=1, description="conv stage widths, top resolution first")
    num_blocks: int = Field(2, ge=1, description="ResBlocks per conv stage (down; the up path mirrors)")
    transformer_width: int = Field(128, ge=1)
    transformer_depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    dropout_max_res: int = Field(16, ge=1, description="dropout only on grids of at most this size")
    input_transform: str = "none"
    transform_levels: int = Field(1, ge=1, description="DWT levels")
    patch_size: int = Field(2, ge=2)
    emb_mult: int = Field(4, ge=1)
    text_proj_dim: int | None = Field(None, ge=1, description="tokens: project caption tokens to this width")
    null_text: str = Field("learned", description="tokens: null sequence of dropped captions (learned | zero)")

    @field_validator("input_transform")
    @classmethod
    def _transform(cls, v: str) -> str:
        if v not in INPUT_TRANSFORMS:
            raise ValueError(f"expected one of {', '.join(INPUT_TRANSFORMS)}, got {v!r}")
        return v

    def reduction(self) -> int:
        """Factor by which the input transform shrinks the grid."""
        if self.input_transform in ("haar", "legall53"):
            return 2 ** self.transform_levels
        return self.patch_size if self.input_transform == "patch" else 1


class UViT(nn.Module):
    """forward(x, noise_labels, class_labels=None, text=None) -> same shape as x."""

    def __init__(self, resolution: int, in_channels: int = 3, num_classes: int = 0, text_dim: int = 0,
                 config: UViTConfig | None = None, text_mode: str = "pooled", **overrides):
        super().__init__()
        cfg = UViTConfig.model_validate({**(config or UViTConfig()).model_dump(), **overrides})
        self.config = cfg
        r = cfg.reduction()
        n_stages = len(cfg.channels)
        if resolution % (r * 2 ** n_stages):
            raise ValueError(f"resolution {resolution} is not divisible by the input transform's factor {r} "
                             f"times 2^{n_stages} (one halving per conv stage)")
        self.top_res = top = resolution // r
        self.transformer_res = top // 2 ** n_stages
        if cfg.dropout > 0 and cfg.dropout_max_res >= top:
            raise ValueError(f"dropout_max_res {cfg.dropout_max_res} would put dropout on the top-resolution "
                             f"{top}x{top} feature maps; expected a value below {top}")
        c0 = cfg.channels[0]
        emb_dim = cfg.emb_mult * c0
        tokens = bool(text_dim) and text_mode == "tokens"
        self.text_tokens = TextTokens(text_dim, cfg.text_proj_dim, cfg.null_text) if tokens else None
        ctx_dim = self.text_tokens.dim if tokens else 0
        self.embed = ConditionEmbedding(c0, emb_dim, num_classes, ctx_dim or text_dim)

        def drop(res: int) -> float:
            return cfg.dropout if res <= cfg.dropout_max_res else 0.0

        # Input / output transforms.
        self.dwt = DWT(cfg.input_transform, cfg.transform_levels) if cfg.input_transform in _WAVELETS else None
        net_in = in_channels * (4 ** cfg.transform_levels if self.dwt is not None else 1)
        if cfg.input_transform == "patch":
            p = cfg.patch_size
            self.conv_in = nn.Conv2d(in_channels, c0, p, stride=p)
            self.conv_out = zero_init(nn.ConvTranspose2d(c0, in_channels, p, stride=p))
        else:
            self.conv_in = nn.Conv2d(net_in, c0, 3, padding=1)
            self.conv_out = zero_init(nn.Conv2d(c0, net_in, 3, padding=1))

        # Down path: each stage's blocks, then a stride-2 conv.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c, res, skips = c0, top, []
        for width in cfg.channels:
            blocks = nn.ModuleList()
            for _ in range(cfg.num_blocks):
                blocks.append(ResBlock(c, width, emb_dim, drop(res)))
                blocks[-1].resolution = res
                c = width
                skips.append(c)
            self.down.append(blocks)
            self.downsample.append(Downsample(c))
            res //= 2

        # Transformer stack on the lowest grid, with a learned position embedding.
        w = cfg.transformer_width
        self.to_tokens = nn.Linear(c, w)
        self.pos = nn.Parameter(torch.randn(1, res * res, w) * 0.02)
        self.transformer = nn.ModuleList([TransformerBlock(w, cfg.heads, emb_dim, cfg.mlp_ratio, drop(res), ctx_dim)
                                          for _ in range(cfg.transformer_depth)])
        self.norm_tokens = nn.LayerNorm(w, eps=1e-6)
        self.from_tokens = nn.Linear(w, c)

        # Up path: nearest + conv, then blocks fed the mirrored skips.
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(cfg.channels):
            self.upsample.append(Upsample(c))
            res *= 2
            blocks = nn.ModuleList()
            for _ in range(cfg.num_blocks):
                blocks.append(ResBlock(c + skips.pop(), width, emb_dim, drop(res)))
                blocks[-1].resolution = res
                c = width
            self.up.append(blocks)
        self.norm_out = group_norm(c)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        ctx = None
        if self.text_tokens is not None:
            if text is None:
                raise ValueError("this U-ViT cross-attends to caption tokens: pass text (N, L, D)")
            ctx = self.text_tokens(text)
        emb = self.embed(noise_labels, class_labels, ctx.pooled if ctx is not None else text)
        h = self.conv_in(self.dwt(x) if self.dwt is not None else x)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        n, c, hh, ww = h.shape
        tokens = self.to_tokens(h.flatten(2).transpose(1, 2)) + self.pos
        for block in self.transformer:
            tokens = block(tokens, emb, ctx)
        h = self.from_tokens(self.norm_tokens(tokens)).transpose(1, 2).reshape(n, c, hh, ww)
        for up, blocks in zip(self.upsample, self.up):
            h = up(h)
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return self.dwt.inverse(out) if self.dwt is not None else out


__all__ = ["UViT", "UViTConfig", "TransformerBlock", "DWT", "dwt2d", "idwt2d", "haar_1d", "ihaar_1d",
           "legall53_1d", "ilegall53_1d", "INPUT_TRANSFORMS"]
