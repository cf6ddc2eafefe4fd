"""The one Fréchet distance used by FID, sFID and FD-DINOv2 (metrics.md §2.1).

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

The trace-sqrt term is computed in the symmetric form tr((A S2 A)^{1/2}) with A = S1^{1/2}: both
square roots are of symmetric PSD matrices, so two ``eigh`` calls give it without the complex
round-off ``sqrtm`` of the non-symmetric product produces, and ~6x faster at D = 2048.
``frechet_distance_adm`` replicates the ADM evaluator's scipy procedure for cross-checks.
"""
from __future__ import annotations

import warnings

import numpy as np


def _as_stats(mu: np.ndarray, sigma: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{side}: expected mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{side}: statistics contain NaN or inf")
    return mu, sigma


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (tiny negative eigenvalues from round-off clipped to 0)."""
    w, v = np.linalg.eigh((sym + sym.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}) for symmetric PSD S1, S2."""
    a = _psd_sqrt(sigma1)
    m = a @ sigma2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def trace_sqrt_low_rank(factor1: np.ndarray, sigma2: np.ndarray) -> float:
    """Same trace when S1 = F F^T with F of shape (D, k), k < D: the nonzero eigenvalues of S1 S2 are
    those of the k x k matrix F^T S2 F, so small sample sets cost O(D^2 k) instead of O(D^3)."""
    m = factor1.T @ sigma2 @ factor1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     factor1: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), all in float64.

    ``factor1`` (optional, D x k with sigma1 = F F^T) selects the exact low-rank route for k < D."""
    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]} "
                         "(statistics from different extractors or layers?)")
    diff = mu1 - mu2
    if factor1 is not None and factor1.shape[0] == mu1.shape[0] and factor1.shape[1] < mu1.shape[0]:
        tr = trace_sqrt_low_rank(np.asarray(factor1, np.float64), sigma2)
    else:
        tr = trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr)


def frechet_distance_adm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                         eps: float = 1e-6) -> float:
    """The ADM evaluator's procedure (scipy ``sqrtm`` of S1 S2, eps retry, imaginary check), for cross-checks."""
    from scipy import linalg

    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
