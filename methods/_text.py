"""Text-conditioning options shared by the text-to-image adapters (simple, mdm, greedy).

``text_conditioning``: ``pooled`` — one caption vector (N, text_dim) added to the embedding (the harness's
original path); ``tokens`` — the encoder's token sequence (N, text_length, text_dim) with its padding mask,
read by cross-attention (bench.nets.text_cond), its masked mean also added to the embedding.
``null_text``: what a dropped caption (classifier-free guidance) becomes in ``tokens`` mode.
``text_length``: tokens per caption the data carries (the caption cache pads to it); used for shapes and
FLOP counting.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from bench.method import MethodConfig
from bench.nets.text_cond import NULL_TEXT_MODES, TEXT_CONDITIONING


class TextOptions(MethodConfig):
    text_conditioning: str = Field("pooled", description="pooled | tokens (cross-attention)")
    text_length: int = Field(77, ge=1, description="caption tokens per example (tokens mode)")
    null_text: str = Field("learned", description="tokens mode: null sequence of dropped captions (learned | zero)")

    @field_validator("text_conditioning")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in TEXT_CONDITIONING:
            raise ValueError(f"expected one of {', '.join(TEXT_CONDITIONING)}, got {v!r}")
        return v

    @field_validator("null_text")
    @classmethod
    def _null(cls, v: str) -> str:
        if v not in NULL_TEXT_MODES:
            raise ValueError(f"expected one of {', '.join(NULL_TEXT_MODES)}, got {v!r}")
        return v

    def text_mode(self) -> str:
        """What the networks build: 'tokens' only for a text-conditional config in tokens mode."""
        return self.text_conditioning if self.conditioning == "text" else "pooled"
