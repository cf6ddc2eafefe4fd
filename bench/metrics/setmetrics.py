"""Metrics over whole feature sets, delegated to torch-fidelity: precision/recall (ADM protocol) and KID."""
from __future__ import annotations

import torch


def precision_recall(generated: torch.Tensor, reference: torch.Tensor, k: int = 3,
                     batch_size: int = 10_000) -> dict[str, float]:
    """Kynkäänniemi et al. with k-NN radii (self excluded), ADM protocol: pool3 features, k = 3.

    Precision: fraction of generated points inside some reference ball; recall: the converse.
    torch-fidelity computes exact float32 distances (ADM first tries float16: ~1e-3 differences).
    """
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    for name, f in (("generated", generated), ("reference", reference)):
        if f.ndim != 2 or f.shape[0] <= k:
            raise ValueError(f"precision/recall: {name} features need shape (N > {k}, D); got {tuple(f.shape)}")
    p, r = calculate_precision_recall_part(generated.float(), reference.float(), k, batch_size)
    return {"precision": float(p), "recall": float(r)}


def kid(generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> dict[str, float]:
    """Kernel Inception Distance: unbiased MMD^2, cubic polynomial kernel, averaged over random subsets
    (subset size reduced to the smaller set when a set has fewer rows)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, generated.shape[0], reference.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    out = kid_features_to_metric(generated.float(), reference.float(), kid_subsets=subsets, kid_subset_size=size,
                                 rng_seed=seed, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    return {"kid": out["kernel_inception_distance_mean"], "kid_std": out["kernel_inception_distance_std"],
            "kid_subset_size": size, "kid_subsets": subsets}
