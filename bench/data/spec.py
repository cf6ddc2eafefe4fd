"""Dataset specification (the `data:` section of a run or suite) and the reader registry.

A dataset is any object with ``__len__``, ``__getitem__(i) -> dict`` and the attributes
``resolution``, ``channels``, ``num_classes`` (0 = no labels). Items are dicts with
``image`` (uint8 tensor C x R x R), ``label`` (int, -1 = none) and optionally ``caption`` (str)
or ``text`` (float tensor, a cached caption embedding).

Kinds (registered in bench.data.registry by the modules bench/data/readers.py imports): folder, zip, webdataset, imagenet, celebahq, coco,
clipart, emoji, synthetic. ``text`` (optional) wraps a captioned dataset so items carry caption
embeddings from a frozen open_clip text tower (bench.data.text).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bench.data.registry import READERS, check_options, reader  # noqa: F401  (re-exported)


class TextSpec(BaseModel):
    """Caption encoder for text conditioning; embeddings are cached on disk (pooled: per dataset + encoder;
    tokens: per encoder + caption, bench.data.text_tokens)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    family: str = Field("open_clip", pattern="^(open_clip|t5)$", description="open_clip | t5 (tokens only)")
    output: str = Field("pooled", pattern="^(pooled|tokens)$",
                        description="pooled: one vector per caption; tokens: the (length, dim) token sequence")
    model: str = Field(..., description="open_clip model name (e.g. ViT-B-32-quickgelu) or T5 name "
                                        "(e.g. google/flan-t5-xl, staged as t5:<name>)")
    pretrained: str | None = Field(None, description="open_clip: pretrained tag (file from the asset folder) or "
                                                     "a weight file path")
    max_length: int | None = Field(None, gt=0, description="tokens per caption (T5 default 128; CLIP: its context)")
    dtype: str = Field("fp16", pattern="^(fp16|bf16|fp32)$", description="token cache storage dtype")
    batch_size: int = Field(64, gt=0, description="captions per encoder call")
    assets: str | None = Field(None, description="asset folder (default $BENCH_ASSETS, else ./assets)")
    cache_dir: str | None = Field(None, description="caption-embedding cache (default $BENCH_CACHE/captions)")
    normalize: bool = Field(True, description="L2-normalise the pooled text embeddings")
    device: str = "cpu"


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: str = Field(..., description="reader name, e.g. folder, zip, synthetic")
    root: str | None = None
    resolution: int = Field(32, gt=0)
    split: str = "train"
    max_items: int | None = Field(None, gt=0)
    on_corrupt: str = Field("fail", pattern="^(fail|skip)$")
    options: dict[str, Any] = Field(default_factory=dict, description="reader-specific options")
    text: TextSpec | None = Field(None, description="encode captions for text conditioning")


def build_dataset(spec: DatasetSpec, *, with_text: bool = True):
    """The dataset of ``spec``; wrapped with caption embeddings when ``spec.text`` is set."""
    from bench.data import readers  # noqa: F401  (imports every reader module: each registers its kind)
    from bench.method import ConfigError

    if spec.kind not in READERS:
        raise ConfigError(f"field 'data.kind': unknown dataset kind {spec.kind!r}; "
                          f"allowed: {', '.join(sorted(READERS))}")
    ds = READERS[spec.kind](spec)
    if spec.text is not None and with_text and spec.text.output == "tokens":
        from bench.data.text_tokens import TokenCache, TokenTextConditioned, build_token_encoder

        t = spec.text
        enc = build_token_encoder(t)
        return TokenTextConditioned(ds, enc, TokenCache(t.cache_dir, enc.id, t.dtype), t.max_length)
    if spec.text is not None and with_text:
        from bench.data.text import CaptionCache, TextConditioned, TextEncoder, dataset_key

        t = spec.text
        if t.family != "open_clip" or not t.pretrained:
            raise ConfigError("field 'data.text': pooled embeddings come from open_clip (family open_clip, "
                              "pretrained set); T5 gives output: tokens")
        enc = TextEncoder(t.model, t.pretrained, assets=t.assets, device=t.device, normalize=t.normalize)
        ds = TextConditioned(ds, enc, CaptionCache(t.cache_dir, dataset_key(spec), enc.id))
    return ds
