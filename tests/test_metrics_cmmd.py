"""CMMD (Jayasumana et al. 2024): the kernel estimator against a brute-force oracle, its invariants, and the
metric through the evaluator and reference files with a tiny random-init CLIP."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.metrics.cmmd import SCALE, SIGMA, ClipImageEmbedder, CmmdSettings, cmmd


def _oracle(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """Direct V-statistic with torch.cdist in float64 (independent of the blocked implementation)."""
    k = lambda a, b: torch.exp(-torch.cdist(a.double(), b.double()) ** 2 / (2 * sigma ** 2)).mean()  # noqa: E731
    return float(scale * (k(x, x) + k(y, y) - 2 * k(x, y)))


def test_cmmd_matches_oracle_and_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(23, 16, generator=g) + 0.3, dim=-1)
    want = _oracle(x, y)
    # float64 sums of O(n²) terms in [0, 1]: agreement to ~1e-12 relative, times the 1000 scale
    assert cmmd(x, y) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert cmmd(x, y, block=5) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(x, y) == pytest.approx(cmmd(y, x), rel=1e-12)
    assert cmmd(x, y) > 0


def test_cmmd_closed_form_two_points():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])    # ‖a − b‖² = 25
    assert cmmd(a, b) == pytest.approx(1000 * (2 - 2 * math.exp(-25 / 200)), rel=1e-12)
    assert cmmd(a, b, sigma=5.0, scale=1.0) == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-12)
    with pytest.raises(ValueError, match="cmmd"):
        cmmd(torch.zeros(3, 4), torch.zeros(3, 5))


def test_cmmd_through_evaluator_and_reference(metric_assets, tmp_path, no_network):
    from fixtures_metrics import TINY_CLIP, register_tiny_clip
    from test_metrics_pipeline import write_samples

    from bench.data.synthetic import SyntheticShapes
    from bench.metrics.api import build_reference
    from bench.metrics.evaluate import EvalSettings, StreamingEvaluator
    from bench.metrics.reference import read_reference
    from bench.metrics.sources import iter_npz

    register_tiny_clip()
    settings = CmmdSettings(model=TINY_CLIP, pretrained="test")
    emb = ClipImageEmbedder(settings, metric_assets)
    ds = SyntheticShapes(resolution=32, n=12, seed=5)
    ref_path = build_reference(ds, tmp_path / "ref.npz", metric_assets, pr_images=12, cmmd=settings, progress=False)
    ref = read_reference(ref_path)
    assert ref.cmmd_emb.shape[0] == 12 and ref.cmmd_emb.dtype == np.float16 and ref.cmmd_id == emb.id
    arr = write_samples(tmp_path / "s.npz", n=6)
    ev = StreamingEvaluator(EvalSettings(metrics=["cmmd"], cmmd=settings), metric_assets, ref)
    for b in iter_npz(tmp_path / "s.npz", 4):
        ev.update(b)
    res = ev.result()
    gen = emb(torch.from_numpy(arr).permute(0, 3, 1, 2))
    want = cmmd(gen, torch.from_numpy(ref.cmmd_emb.astype(np.float32)))
    assert res["metrics"]["cmmd"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert res["details"]["cmmd"]["reference_embeddings"] == "stored"
    # stored embeddings are fp16: recomputing them from arr_0 agrees to fp16 rounding of unit vectors
    ev2 = StreamingEvaluator(EvalSettings(metrics=["cmmd"], cmmd=settings), metric_assets, ref)
    ref.cmmd_id = "other-weights"
    for b in iter_npz(tmp_path / "s.npz", 4):
        ev2.update(b)
    r2 = ev2.result()
    assert r2["details"]["cmmd"]["reference_embeddings"] == "arr_0"
    assert r2["metrics"]["cmmd"] == pytest.approx(want, abs=1000 * 4 * 2 ** -11)
