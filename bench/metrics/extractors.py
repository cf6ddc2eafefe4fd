"""Feature extractors behind one small interface, and the factory that builds them from the asset folder.

An extractor maps uint8 NCHW images to a dict with some of:
  "pool"    -> (N, D) features for FID / precision-recall / KID
  "spatial" -> (N, D_s) features for sFID
  "logits"  -> (N, C) class logits for the Inception Score
Its ``id`` (family + weight hash) is recorded beside every number; ``family`` decides column names,
so numbers from different extractors never share a column.
"""
from __future__ import annotations

from typing import Protocol

import torch

from bench.method import ConfigError
from bench.metrics.assets import AssetFolder, dinov2_spec, inception_spec, trained_spec, weights_id

STANDARD = "inception"


class Extractor(Protocol):
    id: str
    family: str
    provides: tuple[str, ...]
    official: bool | None

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


def column(metric: str, family: str) -> str:
    """Result column of ``metric`` computed with an extractor family: plain for the standard Inception,
    suffixed otherwise (``fid[trained:clipart]``)."""
    return metric if family == STANDARD else f"{metric}[{family}]"


def build_extractor(name: str, assets: AssetFolder, device: torch.device | str = "cpu") -> Extractor:
    """``inception`` | ``trained:<name>`` | ``dinov2[:<timm-name>]``."""
    if name == STANDARD:
        from bench.metrics.inception import InceptionExtractor
        path, entry = assets.require(inception_spec())
        return InceptionExtractor(path, weights_id("inception-v3-compat", entry), entry.get("official"), device)
    if name.startswith("trained:"):
        from bench.metrics.trained import TrainedExtractor
        path, entry = assets.require(trained_spec(name.split(":", 1)[1]))
        return TrainedExtractor.load(path, name, weights_id(name, entry), device)
    if name == "dinov2" or name.startswith("dinov2:"):
        from bench.metrics.dinov2 import DinoV2Extractor
        spec = dinov2_spec(name.split(":", 1)[1]) if ":" in name else dinov2_spec()
        path, entry = assets.require(spec)
        return DinoV2Extractor(path, spec.key.split(":", 1)[1], weights_id("dinov2", entry), device)
    raise ConfigError(f"extractor {name!r}: expected inception, trained:<name> or dinov2[:<timm-name>]")
