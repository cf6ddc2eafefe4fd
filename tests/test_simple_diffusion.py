"""simple diffusion (SiD1) adapter: schedules, loss, U-ViT, DWT / patching, sampler (CARDS.md §3)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.diffusion.param import eps_from_v, v_from_x_eps, x_from_v
from bench.diffusion.rng import StackedRandom
from bench.diffusion.schedules import alpha_sigma_from_logsnr
from bench.method import ConfigError, build_method
from bench.nets.uvit import DWT, TransformerBlock, UViT, UViTConfig, dwt2d, idwt2d, legall53_1d
from methods.simple_diffusion import (SimpleDiffusionConfig, multiscale_eps_loss, multiscale_sizes,
                                      sampling_logsnr_grid, sid_logsnr)


def _cfg(**kw) -> SimpleDiffusionConfig:
    return SimpleDiffusionConfig(**kw)


# ---- schedules ----------------------------------------------------------------------------------

def test_cosine_endpoints_and_midpoint():
    cfg = _cfg(resolution=64, schedule="cosine")
    lam = sid_logsnr(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), cfg)
    torch.testing.assert_close(lam, torch.tensor([15.0, 0.0, -15.0], dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("d,ref,shift", [(128, 64, -1.386294), (256, 64, -2.772589), (512, 64, -4.158883),
                                         (32, 16, -1.386294)])
def test_shifted_schedule_values(d, ref, shift):
    cfg = _cfg(resolution=d, schedule="shifted", ref_resolution=ref)
    lam = sid_logsnr(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), cfg)
    assert math.isclose(2 * math.log(ref / d), shift, abs_tol=1e-6)
    torch.testing.assert_close(lam, torch.tensor([15 + shift, shift, -15 + shift], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_interpolated_orientation_strong_shift_at_high_noise():
    m = build_method("simple", "cpu-tiny-interp")          # 32 px, ref_low 8 (t→1), ref_high 32 (t→0)
    lam = m.logsnr(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    s_lo, s_hi = 2 * math.log(8 / 32), 2 * math.log(32 / 32)
    torch.testing.assert_close(lam, torch.tensor([15 + s_hi, 0.5 * (s_lo + s_hi), -15 + s_lo],
                                                 dtype=torch.float64), atol=1e-9, rtol=0)
    # Interpolated lies below the weak (ref_high) shift everywhere in (0, 1]: more noise at high t.
    t = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    assert bool((torch.diff(m.logsnr(t)) < 0).all())


def test_alpha_sigma_from_logsnr_are_vp():
    lam = torch.linspace(-20, 20, 41, dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(lam) + torch.sigmoid(-lam), torch.ones_like(lam))
    a, s = alpha_sigma_from_logsnr(lam)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(lam))
    torch.testing.assert_close(torch.log(a ** 2 / s ** 2), lam)


def test_v_to_eps_and_x_conversion():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    a, s = alpha_sigma_from_logsnr(torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64))
    z = a.view(-1, 1, 1, 1) * x + s.view(-1, 1, 1, 1) * eps
    v = v_from_x_eps(x, eps, a, s)
    torch.testing.assert_close(eps_from_v(z, v, a, s), eps)          # ε̂ = σ z + α v̂
    torch.testing.assert_close(x_from_v(z, v, a, s), x)


# ---- multiscale loss -----------------------------------------------------------------------------

def test_multiscale_weights_are_one_over_s():
    eps = torch.zeros(2, 3, 32, 32)
    c = 0.7
    # A constant error is the same at every scale: total = c² Σ 1/s.
    total, terms = multiscale_eps_loss(eps, eps + c, [8, 16, 32])
    torch.testing.assert_close(total, torch.full((2,), c * c * (1 / 8 + 1 / 16 + 1 / 32)))
    assert set(terms) == {8, 16, 32}
    # A checkerboard error averages out under any pooling: only the full-resolution term remains.
    checker = c * ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2 - 1).float()
    total, terms = multiscale_eps_loss(eps, eps + checker, [8, 16, 32])
    torch.testing.assert_close(total, torch.full((2,), c * c / 32))
    assert float(terms[8]) < 1e-12 and float(terms[16]) < 1e-12
    assert multiscale_sizes(512) == [32, 64, 128, 256, 512]


class _StandIn(nn.Module):
    """A fixed 'network' v̂ = 0.3 z + 0.01 λ."""

    def forward(self, z, lam, labels=None, text=None):
        return 0.3 * z + 0.01 * lam.view(-1, 1, 1, 1)


def _pool(x: torch.Tensor, s: int) -> torch.Tensor:
    n, c, d, _ = x.shape
    k = d // s
    return x.reshape(n, c, s, k, s, k).mean(dim=(3, 5))


def test_loss_equals_hand_computed_formula():
    m = build_method("simple", "cpu-tiny")
    m.model.net = _StandIn()
    stage = m.stages()[0]
    batch = m.example_batch(stage, 3)
    loss, logs = m.loss(batch, stage)
    # By hand, with the same per-example streams in the same order: t, then ε.
    rng = StackedRandom(batch.rng.seeds)
    x = batch.top()
    t = rng.rand((3,), dtype=torch.float64)
    t_min, t_max = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
    lam = -2 * torch.log(torch.tan(t_min + t * (t_max - t_min))) + 2 * math.log(16 / 32)
    alpha, sigma = torch.sigmoid(lam).sqrt().view(-1, 1, 1, 1), torch.sigmoid(-lam).sqrt().view(-1, 1, 1, 1)
    eps = rng.randn(x.shape).double()
    z = alpha * x.double() + sigma * eps
    eps_hat = sigma * z + alpha * (0.3 * z + 0.01 * lam.view(-1, 1, 1, 1))
    expected = sum((1 / s) * ((_pool(eps, s) - _pool(eps_hat, s)) ** 2).mean(dim=(1, 2, 3)) for s in (8, 16, 32))
    torch.testing.assert_close(loss.double(), expected.mean(), rtol=1e-4, atol=1e-6)
    assert set(logs) >= {"loss_8", "loss_16", "loss_32"}


# ---- wavelets, patching --------------------------------------------------------------------------

@pytest.mark.parametrize("wavelet", ["haar", "legall53"])
@pytest.mark.parametrize("levels", [1, 2])
def test_dwt_idwt_identity(wavelet, levels):
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = DWT(wavelet, levels)
    y = d(x)
    assert y.shape == (2, 3 * 4 ** levels, 16 // 2 ** levels, 24 // 2 ** levels)
    torch.testing.assert_close(d.inverse(y), x, atol=1e-12, rtol=0)
    assert not torch.allclose(y[:, :3 * 4 ** (levels - 1)], y[:, 3 * 4 ** (levels - 1):2 * 3 * 4 ** (levels - 1)])


def test_haar_is_orthonormal_and_legall_has_its_filters():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = dwt2d(x, "haar")
    torch.testing.assert_close((y ** 2).sum(), (x ** 2).sum())
    torch.testing.assert_close(y[:, :1], x.reshape(1, 1, 4, 2, 4, 2).sum(dim=(3, 5)) / 2)   # LL = 2×2 sum / 2
    sig = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s, d = legall53_1d(sig, 0)
    lo = torch.tensor([-1, 2, 6, 2, -1], dtype=torch.float64) / 8
    hi = torch.tensor([-1, 2, -1], dtype=torch.float64) / 2
    for n in range(1, 15):                                   # interior coefficients (no boundary)
        torch.testing.assert_close(s[n], (lo * sig[2 * n - 2:2 * n + 3]).sum())
        torch.testing.assert_close(d[n], (hi * sig[2 * n:2 * n + 3]).sum())
    const = torch.full((1, 1, 8, 8), 0.25, dtype=torch.float64)      # DC gain 1, no detail
    yc = dwt2d(const, "legall53")
    torch.testing.assert_close(yc[:, :1], torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64))
    assert float(yc[:, 1:].abs().max()) == 0.0
    torch.testing.assert_close(idwt2d(dwt2d(x, "legall53"), "legall53"), x)


@pytest.mark.parametrize("transform,levels,in_ch", [("haar", 1, 12), ("legall53", 2, 48), ("patch", 1, 3),
                                                      ("none", 1, 3)])
def test_uvit_input_transforms(transform, levels, in_ch):
    cfg = UViTConfig(channels=(16,), num_blocks=1, transformer_width=32, transformer_depth=1, heads=2,
                     input_transform=transform, transform_levels=levels, patch_size=2)
    res = 32 if levels == 1 else 64
    net = UViT(res, 3, config=cfg)
    assert net.conv_in.in_channels == in_ch
    assert net.top_res == res // cfg.reduction()
    if transform == "patch":
        assert net.conv_in.stride == (2, 2) and isinstance(net.conv_out, nn.ConvTranspose2d)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = net(torch.randn(2, 3, res, res), torch.tensor([0.0, 1.0]))
    assert out.shape == (2, 3, res, res) and torch.isfinite(out).all()


def test_no_dropout_on_top_resolution_feature_maps():
    m = build_method("simple", "cpu-tiny", {"uvit_overrides": {"dropout": 0.5}})
    net = m.model.net
    top = [b for blocks in (*net.down, *net.up) for b in blocks if b.resolution == net.top_res]
    low = [b for blocks in (*net.down, *net.up) for b in blocks if b.resolution < net.top_res]
    assert top and all(b.dropout.p == 0 for b in top)
    assert all(isinstance(b, TransformerBlock) and b.dropout.p == 0.5 for b in net.transformer)
    assert all(b.dropout.p == 0.5 for b in low if b.resolution <= net.config.dropout_max_res)
    # Functionally: in train mode the top-resolution down path is deterministic, the transformer is not.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen: dict[str, list[torch.Tensor]] = {"top": [], "transformer": []}
    net.down[0][-1].register_forward_hook(lambda mod, i, o: seen["top"].append(o))
    net.transformer[-1].register_forward_hook(lambda mod, i, o: seen["transformer"].append(o))
    net.train()
    x, lam = torch.randn(2, 3, 32, 32), torch.zeros(2)
    for seed in (0, 1):
        torch.manual_seed(seed)
        net(x, lam)
    assert torch.equal(*seen["top"])
    assert not torch.allclose(*seen["transformer"])
    with pytest.raises(ConfigError, match="top-resolution"):
        build_method("simple", "cpu-tiny", {"uvit_overrides": {"dropout": 0.1, "dropout_max_res": 16}})


# ---- sampler --------------------------------------------------------------------------------------

def test_sampling_grid_follows_training_schedule():
    cfg = build_method("simple", "cpu-tiny-interp").config
    grid = sampling_logsnr_grid(cfg, 8)
    assert grid.shape == (9,) and math.isinf(float(grid[-1]))
    torch.testing.assert_close(grid[:-1], sid_logsnr(1 - torch.arange(8, dtype=torch.float64) / 8, cfg))
    assert bool((torch.diff(grid[:-1]) > 0).all())


def test_sampler_nfe_and_guidance_cost():
    m = build_method("simple", "cpu-tiny-cond")
    calls = [0]
    m.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    m.model.eval()
    x, nfe = m.sample(StackedRandom([0, 1]), m.example_condition(2), steps=5)
    assert nfe == 5 == calls[0] and x.shape == (2, 3, 32, 32)
    calls[0] = 0
    x, nfe = m.sample(StackedRandom([0, 1]), m.example_condition(2), steps=5, guidance=3.0)
    assert nfe == 10 and calls[0] == 5                         # one batched cond+uncond call per step
    assert x.min() >= -1 and x.max() <= 1


def test_sampler_clips_x_hat():
    """An overshooting x̂ (= 50) is clipped to 1 before the posterior step, so z stays near α·1."""
    def last_z_mean(clip: bool) -> float:
        m = build_method("simple", "cpu-tiny", {"clip_x": clip})
        seen = []

        def predict(z, lam):
            seen.append(float(z.mean()))
            return torch.full_like(z, 50.0), 1
        m.predict_x_fn = lambda cond, g: predict
        x, nfe = m.sample(StackedRandom([0, 1]), None, steps=4)
        assert nfe == 4 and len(seen) == 4 and x.abs().max() <= 1
        return seen[-1]
    assert abs(last_z_mean(True)) < 2.0
    assert last_z_mean(False) > 10.0


# ---- presets, config errors ------------------------------------------------------------------------

def test_presets_build_and_paper_sizes():
    for p in ("cpu-tiny", "cpu-tiny-interp", "cpu-tiny-cond"):
        m = build_method("simple", p)
        assert m.param_count() < 2_000_000
        assert m.model.net.top_res == 16 and m.model.net.transformer_res == 8
        assert m.model.net.conv_in.in_channels == 12                       # Haar DWT 32 → 16
    with torch.device("meta"):                                             # shapes only, no memory
        sizes = {p: build_method("simple", p).param_count() for p in ("imagenet128", "imagenet256", "imagenet512")}
        m512 = build_method("simple", "imagenet512")
    assert 1.5e9 < sizes["imagenet256"] < 2.5e9                             # the ~2B U-ViT
    assert m512.model.net.top_res == 256 and m512.model.net.transformer_res == 16
    assert m512.config.schedule == "interpolated" and m512.config.multiscale == [32, 64, 128, 256, 512]


@pytest.mark.parametrize("over,msg", [({"multiscale": [8, 12, 32]}, "multiscale"),
                                      ({"multiscale": [8, 16]}, "multiscale"),
                                      ({"schedule": "linear"}, "schedule"),
                                      ({"uvit": "nope"}, "uvit"),
                                      ({"uvit_overrides": {"input_transform": "fft"}}, "uvit")])
def test_config_errors_name_the_field(over, msg):
    with pytest.raises(ConfigError, match=msg):
        build_method("simple", "cpu-tiny", over)
