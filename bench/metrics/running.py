"""Running statistics: samples flow through, only O(D^2) (FID/sFID) or O(chunk) (IS) state is kept."""
from __future__ import annotations

import numpy as np
import torch


class RunningMoments:
    """Mean and unbiased covariance of a stream of feature rows, accumulated in float64.

    Batches are merged with Chan et al.'s pairwise update of (count, mean, centred scatter), which
    avoids the cancellation of the raw sum-of-outer-products form when features have a large mean.
    """

    def __init__(self, dim: int, keep_rows: int = 1024):
        self.dim = int(dim)
        self.keep_rows = keep_rows  # small sets also keep their rows: exact low-rank Fréchet distance
        self._rows: list[np.ndarray] | None = []
        self.n = 0
        self.mean = np.zeros(self.dim, dtype=np.float64)
        self.scatter = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        x = x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"feature width {x.shape[1]} != {self.dim}")
        m = x.shape[0]
        if m == 0:
            return
        if self._rows is not None:
            self._rows.append(x.copy())
            if self.n + m > min(self.keep_rows, self.dim - 1):
                self._rows = None
        bmean = x.mean(axis=0)
        xc = x - bmean
        bscatter = xc.T @ xc
        delta = bmean - self.mean
        total = self.n + m
        self.scatter += bscatter + np.outer(delta, delta) * (self.n * m / total)
        self.mean += delta * (m / total)
        self.n = total

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) with the N-1 divisor (numpy ``cov(rowvar=False)``, the ADM/EDM convention)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.n}")
        return self.mean.copy(), self.scatter / (self.n - 1)

    def factor(self) -> np.ndarray | None:
        """F (D x n) with sigma = F F^T while the rows are kept (n < D), else None."""
        if self._rows is None or self.n < 2:
            return None
        x = np.concatenate(self._rows)
        return ((x - x.mean(axis=0)) / np.sqrt(self.n - 1)).T


class RunningInceptionScore:
    """ADM's Inception Score: samples split in file order into chunks of ``split_size``; the score is
    the mean over chunks of exp(mean KL(p(y|x) || p_chunk(y))). Only the current chunk's logits are
    kept; each finished chunk is scored with torch-fidelity's ``isc_features_to_metric``."""

    def __init__(self, split_size: int = 5000):
        self.split_size = int(split_size)
        self._chunk: list[torch.Tensor] = []
        self._chunk_n = 0
        self.scores: list[float] = []
        self.n = 0

    def update(self, logits: torch.Tensor) -> None:
        logits = logits.detach().float().cpu()
        self.n += logits.shape[0]
        while logits.shape[0]:
            take = min(self.split_size - self._chunk_n, logits.shape[0])
            self._chunk.append(logits[:take])
            self._chunk_n += take
            logits = logits[take:]
            if self._chunk_n == self.split_size:
                self._close_chunk()

    def _close_chunk(self) -> None:
        from torch_fidelity.metric_isc import isc_features_to_metric

        chunk = torch.cat(self._chunk)
        self.scores.append(isc_features_to_metric(chunk, splits=1, shuffle=False)["inception_score_mean"])
        self._chunk, self._chunk_n = [], 0

    def result(self) -> dict[str, float]:
        """Mean (ADM's number) and std over chunks; a trailing partial chunk counts, as in ADM."""
        scores = list(self.scores)
        if self._chunk_n:
            from torch_fidelity.metric_isc import isc_features_to_metric
            scores.append(isc_features_to_metric(torch.cat(self._chunk), splits=1, shuffle=False)
                          ["inception_score_mean"])
        if not scores:
            raise ValueError("Inception Score of zero samples")
        return {"is": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": len(scores)}


class FeatureBank:
    """Keeps feature rows (float32) for the metrics that need whole sets: precision/recall and KID.

    Memory is N x D x 4 bytes (50k x 2048 = 400 MB), independent of the image size; ``limit`` caps N.
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._parts: list[torch.Tensor] = []
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        if self.limit is not None and self.n >= self.limit:
            return
        x = x.detach().float().cpu()
        if self.limit is not None:
            x = x[: self.limit - self.n]
        self._parts.append(x)
        self.n += x.shape[0]

    def features(self) -> torch.Tensor:
        return torch.cat(self._parts) if self._parts else torch.zeros(0, 0)
