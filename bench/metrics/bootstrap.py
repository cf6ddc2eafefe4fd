"""Sampling noise of FID by bootstrap over the generated samples' features.

The generated set's pool features are resampled with replacement (``resamples`` times, a fixed seed) and
the Fréchet distance to the same reference statistics is recomputed for each resample; the spread (std,
ddof 1) estimates how much FID moves from the finite sample set alone, separately from training-seed
variation. The features are the ones extracted in the evaluation pass itself (tapped from the extractor,
or the feature bank precision/recall already keeps): nothing is re-extracted. Duplicates in a resample
bias each bootstrap FID upward, so only the spread is reported, never the bootstrap mean as the value.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


class FeatureTap:
    """Wraps an extractor during the generated-sample pass, keeping the pool features of every batch."""

    def __init__(self, inner: Any):
        self.inner, self.parts = inner, []

    def __call__(self, images):
        out = self.inner(images)
        self.parts.append(out["pool"].detach().float().cpu())
        return out

    def __getattr__(self, name: str) -> Any:       # family, id, official ... of the wrapped extractor
        return getattr(self.inner, name)

    def features(self) -> np.ndarray:
        import torch
        return torch.cat(self.parts).numpy()


def run_with_bootstrap(evaluator: Any, batches: Iterable[Any], resamples: int, seed: int = 0) -> dict[str, Any]:
    """``evaluator.run(batches)`` plus ``sampling_noise`` (FID bootstrap) when it computes FID."""
    wants = resamples > 1 and "fid" in evaluator.metrics and evaluator.extractor is not None
    tap = None
    if wants and evaluator.bank is None:
        tap = evaluator.extractor = FeatureTap(evaluator.extractor)
    try:
        for b in batches:
            evaluator.update(b)
    finally:
        if tap is not None:
            evaluator.extractor = tap.inner        # reference features must not join the tap
    result = evaluator.result()
    if not wants:
        return result
    feats = tap.features() if tap is not None else evaluator.bank.features().numpy()
    key = next(k for k in result["metrics"] if k == "fid" or k.startswith("fid["))
    result["sampling_noise"] = {key: fid_bootstrap(feats, *evaluator._reference_stats("pool"), resamples, seed)}
    return result


def fid_bootstrap(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, resamples: int = 10,
                  seed: int = 0) -> dict[str, Any]:
    from bench.metrics.frechet import frechet_distance

    x = np.asarray(feats, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(resamples)):
        g = x[rng.integers(0, len(x), len(x))]
        vals.append(float(frechet_distance(g.mean(0), np.cov(g, rowvar=False), mu_ref, sigma_ref)))
    return {"std": float(np.std(vals, ddof=1)), "resamples": int(resamples), "values": vals,
            "estimator": "bootstrap over generated features (resampled with replacement; reference fixed)"}
