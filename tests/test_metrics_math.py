"""Oracles of metrics.md §10 that need no weights: Fréchet distance, running moments, IS, P/R, sFID order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics.frechet import frechet_distance, frechet_distance_adm
from bench.metrics.inception import spatial_to_sfid
from bench.metrics.running import FeatureBank, RunningInceptionScore, RunningMoments
from bench.metrics.setmetrics import kid, precision_recall


def random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, 2 * d))
    return scale * a @ a.T / (2 * d) + 1e-3 * np.eye(d)


def test_fd_closed_forms():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)
    s2 = random_spd(rng, d)
    want = 1.7 * d + np.trace(s2) - 2 * np.sqrt(1.7) * np.sqrt(np.linalg.eigvalsh(s2)).sum()
    assert frechet_distance(mu1, 1.7 * np.eye(d), mu1, s2) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(mu1, s2, mu2, s2) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6)
    assert abs(frechet_distance(mu1, s2, mu1, s2)) < 1e-6 * np.trace(s2)


def test_fd_matches_adm_scipy_cleanfid_torch_fidelity():
    from cleanfid.fid import frechet_distance as cf
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(1)
    d, n = 48, 400
    x = np.maximum(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)), 0)
    y = np.maximum(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 0.3, 0)
    m1, s1, m2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(m1, s1, m2, s2)
    assert ours == pytest.approx(frechet_distance_adm(m1, s1, m2, s2), rel=1e-6)
    assert ours == pytest.approx(cf(m1, s1, m2, s2), rel=1e-6)
    tf = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)


def test_fd_rank_deficient_is_finite_and_near_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 64))  # N < D: singular covariance
    m, s = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(m, s, m, s)) < 1e-6 * np.trace(s)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(m, s, m[:3], s[:3, :3])


def test_running_moments_equal_batch_statistics_in_any_chunking():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((257, 16)) * 5 + 1000.0  # large mean: the naive sum-of-squares form loses digits
    ref_mu, ref_sigma = x.mean(0), np.cov(x, rowvar=False)
    for chunks in ([257], [1, 2, 3, 251], [100, 100, 57]):
        m = RunningMoments(16)
        s = 0
        for c in chunks:
            m.update(torch.from_numpy(x[s:s + c]))
            s += c
        mu, sigma = m.stats()
        np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-9, atol=1e-9)


def test_sfid_flatten_is_hwc_order_and_permutation_matters():
    n, c, h, w = 2, 9, 3, 3
    t = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)
    flat = spatial_to_sfid(t)
    assert flat.shape == (n, h * w * 7)
    for (hh, ww, cc) in [(0, 0, 0), (1, 2, 3), (2, 1, 6)]:
        assert flat[1, (hh * w + ww) * 7 + cc] == t[1, cc, hh, ww]
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((300, 12)), rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    perm = rng.permutation(12)
    stats = lambda z: (z.mean(0), np.cov(z, rowvar=False))  # noqa: E731
    base = frechet_distance(*stats(a), *stats(b))
    assert frechet_distance(*stats(a[:, perm]), *stats(b[:, perm])) == pytest.approx(base, rel=1e-9)
    assert abs(frechet_distance(*stats(a[:, perm]), *stats(b)) - base) > 1e-3


def test_inception_score_oracles_and_adm_split_rule():
    from torch_fidelity.metric_isc import isc_features_to_metric

    uniform = RunningInceptionScore(50)
    uniform.update(torch.zeros(100, 10))
    assert uniform.result()["is"] == pytest.approx(1.0, abs=1e-9)
    onehot = RunningInceptionScore(40)
    for chunk in torch.split(torch.eye(20).repeat(6, 1) * 1000.0, 7):  # odd batch sizes: splits stay sequential
        onehot.update(chunk)
    r = onehot.result()
    assert r["is"] == pytest.approx(20.0, rel=1e-6) and r["is_splits"] == 3
    logits = torch.randn(120, 30, generator=torch.Generator().manual_seed(0)) * 3
    ours = RunningInceptionScore(40)
    ours.update(logits)
    lib = isc_features_to_metric(logits, splits=3, shuffle=False)["inception_score_mean"]
    assert ours.result()["is"] == pytest.approx(lib, rel=1e-9)
    partial = RunningInceptionScore(50)  # ADM keeps a trailing partial split
    partial.update(logits)
    assert partial.result()["is_splits"] == 3


def test_precision_recall_oracles_and_counted_case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g)
    assert precision_recall(x, x.clone()) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x + 100, x) == {"precision": 0.0, "recall": 0.0}
    # 1-D, k=3: reference 0..9 (radius of the 3rd neighbour: 3 at the ends, 2 inside -> balls cover [-3, 12]).
    ref = torch.arange(10.0).unsqueeze(1)
    gen = torch.tensor([[-4.0], [-3.0], [5.5], [11.0], [13.0], [50.0]])
    pr = precision_recall(gen, ref, k=3)
    assert pr["precision"] == pytest.approx(3 / 6)
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    p, r = calculate_precision_recall_full(gen, ref, 3)
    assert (pr["precision"], pr["recall"]) == pytest.approx((p, r))


def test_kid_same_vs_shifted_and_bank_limit():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 16, generator=g), torch.randn(80, 16, generator=g)
    same, shifted = kid(x, y, subsets=10, subset_size=40), kid(x, y + 2, subsets=10, subset_size=40)
    assert abs(same["kid"]) < 0.05 < shifted["kid"]
    bank = FeatureBank(limit=5)
    for _ in range(3):
        bank.update(torch.ones(3, 4))
    assert bank.features().shape == (5, 4)


def test_low_rank_route_equals_full_route():
    rng = np.random.default_rng(5)
    d = 40
    x = rng.standard_normal((7, d)) * 2 + 1
    m = RunningMoments(d)
    m.update(torch.from_numpy(x[:3]))
    m.update(torch.from_numpy(x[3:]))
    mu1, s1 = m.stats()
    f = m.factor()
    assert f is not None and f.shape == (d, 7)
    np.testing.assert_allclose(f @ f.T, s1, atol=1e-12)
    mu2, s2 = rng.standard_normal(d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2, factor1=f) == pytest.approx(frechet_distance(mu1, s1, mu2, s2),
                                                                          rel=1e-7)
    big = RunningMoments(4, keep_rows=10)
    big.update(torch.randn(20, 4))
    assert big.factor() is None
