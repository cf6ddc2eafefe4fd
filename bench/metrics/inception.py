"""The ADM-compatible Inception path: torch-fidelity's TF-exact Inception-v3 plus the sFID layer.

One forward pass gives pool3 (2048, FID / P-R / KID), the bias-free logits (1008, IS) and the sFID
vector: ``Mixed_6d.branch1x1`` (TF ``mixed_6/conv``), first 7 channels, flattened in H, W, C order
so that it matches ADM's stored ``mu_s`` / ``sigma_s`` (metrics.md §2.3, §5).
"""
from __future__ import annotations

from pathlib import Path

import torch

SFID_CHANNELS = 7


def spatial_to_sfid(spatial: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) post-ReLU map -> (N, H*W*7): channels last, keep 7, flatten; index (h*W + w)*7 + c."""
    return spatial[:, :SFID_CHANNELS].permute(0, 2, 3, 1).reshape(spatial.shape[0], -1)


class InceptionExtractor:
    family = "inception"
    provides = ("pool", "spatial", "logits")

    def __init__(self, weights: str | Path, extractor_id: str, official: bool | None,
                 device: torch.device | str = "cpu"):
        import io

        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        from bench.safeload import torch_load

        self.id, self.official = extractor_id, official
        self.device = torch.device(device)
        # torch-fidelity unpickles its weights in full: it gets the very bytes the weights-only loader has
        # accepted (held in memory, so the file cannot change in between), which only rebuild tensors.
        data = Path(weights).read_bytes()
        torch_load(weights, "Inception weight file", data=data)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=io.BytesIO(data)).to(self.device)
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, _module, _inputs, output: torch.Tensor) -> None:
        self._spatial = output

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, logits = self.net(images.to(self.device))
        assert self._spatial is not None
        spatial = spatial_to_sfid(self._spatial.float())
        self._spatial = None
        return {"pool": pool, "logits": logits, "spatial": spatial}
