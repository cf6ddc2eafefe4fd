"""Randomly initialised, batch-norm-calibrated Inception weights in torch-fidelity's format.

For tests and for `bench perf eval --random-weights` on machines without the real file: the same
code paths run, the numbers mean nothing and are marked unofficial (their hash is not 6726825d...).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def calibrated_inception_state(seed: int = 0, batches: int = 1, size: int = 32) -> dict[str, torch.Tensor]:
    """torchvision's Inception-v3 with 1008 classes has exactly torch-fidelity's keys. Its default BN stats
    (0 / 1) make activations explode, so they are re-estimated on random images in train mode."""
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    state = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "raw.pth"
        torch.save(state, p)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(p))
    with torch.no_grad():
        net.fc.weight.normal_(0, 0.02)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=g))
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def stage_random_inception(folder, seed: int = 0) -> None:
    from bench.metrics.assets import inception_spec

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "inception.pth"
        torch.save(calibrated_inception_state(seed), p)
        folder.add(inception_spec(), p, source="random-init calibrated weights (not the published file)")
