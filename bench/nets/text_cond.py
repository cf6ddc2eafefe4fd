"""Token-level text conditioning shared by the networks: padding masks, the null text of classifier-free
guidance, masked pooling and cross-attention.

Convention for token sequences (N, L, D): padding positions are all-zero feature rows (the caption cache
writes them so), so the key padding mask travels with the tensor through batching, gradient-accumulation
splits and the batched cond/uncond call of guidance without a second tensor. ``token_mask`` recovers it
(a real encoder output row is never exactly zero: T5 and CLIP end with a LayerNorm). An explicit mask
may still be passed and wins.

A caption whose every position is masked is a dropped condition (label dropout multiplies the text by 0;
``Condition.null()`` is all zeros). ``NullText`` substitutes the null sequence for such rows so attention
never sees an all-masked row (softmax over nothing is NaN):
- ``learned``: one learned token (the Imagen / U-ViT practice of a trainable null embedding);
- ``zero``: one fixed all-zero token (no parameters; its keys/values are the projections' biases).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NULL_TEXT_MODES = ("learned", "zero")
TEXT_CONDITIONING = ("pooled", "tokens")


def token_mask(text: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: True where the token row is not all zero."""
    return text.ne(0).any(dim=-1)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions (N, D); rows without valid positions give 0."""
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


@dataclass
class TextContext:
    """What a network's blocks see of the caption: the pooled vector for the embedding, and the
    (projected) token sequence with its key padding mask for cross-attention."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def select(self, n: int) -> "TextContext":
        return TextContext(self.pooled[:n], self.tokens[:n], self.mask[:n])


class NullText(nn.Module):
    """Replaces dropped captions (all positions masked) by the null sequence (one valid token)."""

    def __init__(self, dim: int, mode: str = "learned"):
        super().__init__()
        if mode not in NULL_TEXT_MODES:
            raise ValueError(f"null_text: expected one of {', '.join(NULL_TEXT_MODES)}, got {mode!r}")
        self.mode = mode
        self.token = nn.Parameter(torch.randn(dim) * 0.02) if mode == "learned" else None

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dropped = ~mask.any(dim=1)
        if not bool(dropped.any()):
            return text, mask
        null = torch.zeros_like(text[0])
        if self.token is not None:
            null[0] = self.token.to(text.dtype)
        null_mask = torch.zeros_like(mask[0])
        null_mask[0] = True
        d = dropped.view(-1, 1, 1)
        return torch.where(d, null, text), torch.where(d.view(-1, 1), null_mask, mask)


class TextTokens(nn.Module):
    """Raw encoder tokens (N, L, text_dim) → TextContext: null substitution, optional linear projection
    (MDM's ``lm_proj``), masked-mean pooling (MDM pools the projected tokens into the time embedding)."""

    def __init__(self, text_dim: int, proj_dim: int | None = None, null_text: str = "learned"):
        super().__init__()
        self.null = NullText(text_dim, null_text)
        self.proj = nn.Linear(text_dim, proj_dim) if proj_dim else None
        self.dim = proj_dim or text_dim

    def forward(self, text: torch.Tensor, mask: torch.Tensor | None = None) -> TextContext:
        if text.ndim != 3:
            raise ValueError(f"token text conditioning expects (N, L, D) caption tokens, got shape {tuple(text.shape)}"
                             " (pooled embeddings need text_conditioning: pooled)")
        mask = token_mask(text) if mask is None else mask.bool()
        text, mask = self.null(text, mask)
        tokens = self.proj(text) if self.proj is not None else text
        return TextContext(masked_mean(tokens, mask), tokens, mask)


class CrossAttention(nn.Module):
    """Multi-head attention of (N, S, W) queries onto LayerNorm'd (N, L, D) context, key padding honoured."""

    def __init__(self, width: int, context_dim: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"cross-attention width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm_context = nn.LayerNorm(context_dim)
        self.kv = nn.Linear(context_dim, 2 * width)

    def forward(self, q: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """``q``: (N, heads, S, W/heads) projected queries → (N, heads, S, W/heads)."""
        n, h, _, d = q.shape
        k, v = self.kv(self.norm_context(ctx.tokens.to(q.dtype))).reshape(n, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask[:, None, None, :])


__all__ = ["token_mask", "masked_mean", "TextContext", "NullText", "TextTokens", "CrossAttention",
           "NULL_TEXT_MODES", "TEXT_CONDITIONING"]
