"""Relay Diffusion (CARDS.md §5): DCT blur, block noise, schedules and oracles, the training input, the
blur-aware sampler and the two-stage hand-off."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from bench.diffusion.blur import (block_noise, blur_factors, blur_heun_sampler, blur_sigma, dct_blur, dct_matrix,
                                  noise_gamma, patch_dct, patch_idct, relay_update, sampler_u, scale_coefficients,
                                  train_u_floor, truncated_karras_grid, truncated_lognormal_sigma)
from bench.diffusion.edm import edm_loss_weight
from bench.diffusion.rng import StackedRandom
from bench.method import ConfigError, build_method
from methods.relay import RelayConfig, RelayDiffusion, enhance, relay_nfe, sde_heun_sampler


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- DCT -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [2, 4])
def test_dct_matrix_orthonormal_and_matches_scipy(s):
    m = dct_matrix(s)
    torch.testing.assert_close(m @ m.T, torch.eye(s, dtype=torch.float64), atol=1e-12, rtol=0)
    ref = scipy.fft.dct(np.eye(s), type=2, norm="ortho", axis=0)       # column n = DCT of basis vector e_n
    np.testing.assert_allclose(m.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("s", [2, 4])
def test_patch_dct_invertible_energy_preserving_and_per_patch(s):
    x = torch.randn(2, 3, 16, 16, generator=_gen(1), dtype=torch.float64)
    c = patch_dct(x, s)
    torch.testing.assert_close(patch_idct(c, s), x, atol=1e-12, rtol=0)
    torch.testing.assert_close((c ** 2).sum(), (x ** 2).sum(), atol=1e-9, rtol=0)
    # coefficient (k, l) of patch (i, j) sits at pixel (i·s + k, j·s + l): compare with scipy per patch
    i, j = 1, 2
    patch = x[0, 1, i * s:(i + 1) * s, j * s:(j + 1) * s].numpy()
    np.testing.assert_allclose(c[0, 1, i * s:(i + 1) * s, j * s:(j + 1) * s].numpy(),
                               scipy.fft.dctn(patch, type=2, norm="ortho"), atol=1e-12)
    # DC coefficient = s · patch mean
    torch.testing.assert_close(c[:, :, ::s, ::s], s * F.avg_pool2d(x, s), atol=1e-12, rtol=0)


def test_dct_blur_matches_scipy_reference_with_per_example_levels():
    s, m = 4, 0.001
    x = torch.randn(2, 1, 8, 8, generator=_gen(2), dtype=torch.float64)
    sb = torch.tensor([0.3, 1.7], dtype=torch.float64)
    out = dct_blur(x, s, sb, m)
    k = np.arange(s)
    freq2 = (np.pi * k[:, None] / s) ** 2 + (np.pi * k[None, :] / s) ** 2
    for n in range(2):
        a = (1 - m) * np.exp(-freq2 * float(sb[n]) ** 2 / 2) + m
        for i in range(2):
            for j in range(2):
                p = x[n, 0, i * s:(i + 1) * s, j * s:(j + 1) * s].numpy()
                ref = scipy.fft.idctn(scipy.fft.dctn(p, norm="ortho") * a, norm="ortho")
                np.testing.assert_allclose(out[n, 0, i * s:(i + 1) * s, j * s:(j + 1) * s].numpy(), ref, atol=1e-12)


def test_full_blur_is_nearest_up_of_avgpool_within_m():
    """The card's toy (s = 2, B_max 3): at u → 1 every non-DC factor is ≈ m."""
    s, m = 2, 0.001
    y = torch.rand(3, 3, 32, 32, generator=_gen(3), dtype=torch.float64) * 2 - 1
    blurred = dct_blur(y, s, blur_sigma(1.0, 3.0), m)
    target = F.interpolate(F.avg_pool2d(y, s), scale_factor=s, mode="nearest")
    err = (blurred - target).abs().max()
    a = blur_factors(blur_sigma(1.0, 3.0), s, m)
    assert float(a[0, 0]) == pytest.approx(1.0) and float(a.flatten()[1:].max()) < 1.1 * m
    assert 0 < err <= 2 * s * 1.1 * m           # patch values in [-1, 1]: |error| ≤ a_max·‖patch‖₂ ≤ a_max·s
    # without the floor m the residual disappears (to the exp term, ~1e-5)
    assert (dct_blur(y, s, blur_sigma(1.0, 3.0), 0.0) - target).abs().max() < 1e-4


def test_blur_keeps_patch_means_for_any_level():
    y = torch.randn(2, 3, 16, 16, generator=_gen(4), dtype=torch.float64)
    for s in (2, 4):
        for sb in (0.0, 0.5, 3.0):
            torch.testing.assert_close(F.avg_pool2d(dct_blur(y, s, sb), s), F.avg_pool2d(y, s), atol=1e-12, rtol=0)
    torch.testing.assert_close(dct_blur(y, 4, 0.0, 0.001), y, atol=1e-12, rtol=0)   # σ_B = 0: identity


def test_s4_at_start_sigma_keeps_lowest_ac_components():
    """Found while checking the card: with s = 4 (ImageNet) the card's 'all non-DC factors at m' at σ = 0.9
    does not hold: the (0,1) factor is exp(−(π/4)²·2.896²/2) ≈ 0.076 (it holds for s = 2)."""
    sb = blur_sigma(sampler_u(torch.tensor(0.9)), 3.0)
    a4, a2 = blur_factors(sb, 4), blur_factors(sb, 2)
    assert float(a4[0, 1]) == pytest.approx(0.999 * math.exp(-(math.pi / 4) ** 2 * float(sb) ** 2 / 2) + 0.001)
    assert 0.07 < float(a4[0, 1]) < 0.08
    assert float(a2.flatten()[1:].max()) < 0.0011


# ---- block noise ---------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [2, 4])
def test_block_noise_covariance(s):
    white = torch.randn(48, 1, 32, 32, generator=_gen(5 + s), dtype=torch.float64)
    b = block_noise(white, s)
    for a in range(-s, s + 1):
        for c in range(-s, s + 1):
            emp = float((b * torch.roll(b, shifts=(a, c), dims=(-2, -1))).mean())
            want = (s - abs(a)) * (s - abs(c)) / s ** 2 if abs(a) < s and abs(c) < s else 0.0
            assert emp == pytest.approx(want, abs=0.025), (a, c, emp, want)


def test_block_noise_is_box_filter_not_constant_blocks():
    white = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    white[0, 0, 3, 3] = 1.0
    b = block_noise(white, 2)
    assert torch.equal(b[0, 0, 3:5, 3:5], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert float(b.sum()) == pytest.approx(2.0) and int((b != 0).sum()) == 4     # a sliding 2×2 footprint


# ---- schedules and the card's oracles ------------------------------------------------------------

def test_sampler_time_oracles():
    u = sampler_u(torch.tensor(0.9), truncation_t=0.93)
    assert float(u) == pytest.approx(0.8808, abs=5e-4)
    assert float(blur_sigma(u, 3.0)) == pytest.approx(2.896, abs=1e-3)
    u = sampler_u(torch.tensor(0.1), truncation_t=0.93)
    sb = blur_sigma(u, 3.0)
    assert float(u) == pytest.approx(0.193, abs=1e-3) and float(sb) == pytest.approx(0.266, abs=1e-3)
    assert float(blur_factors(sb, 4)[3, 3]) == pytest.approx(0.675, abs=1e-3)   # highest frequency, s = 4
    assert float(blur_sigma(sampler_u(torch.tensor(0.01)), 3.0)) < 1e-3


def test_truncated_lognormal_bounds_and_training_floor():
    assert float(truncated_lognormal_sigma(1.0, prob_length=0.93)) == pytest.approx(1.770, abs=1e-3)
    assert float(truncated_lognormal_sigma(1.0, prob_length=0.89)) == pytest.approx(1.312, abs=1e-3)
    uf = train_u_floor(prob_length=0.93)
    assert uf == pytest.approx(9.7e-4, abs=0.1e-4)
    # the official clamp multiplies by L: effective minimum σ ≈ 7.1e−3 / 6.9e−3, below 7.5e−3
    assert float(truncated_lognormal_sigma(uf, prob_length=0.93)) == pytest.approx(7.1e-3, abs=0.1e-3)
    assert float(truncated_lognormal_sigma(train_u_floor(prob_length=0.89), prob_length=0.89)) == \
        pytest.approx(6.9e-3, abs=0.1e-3)
    # sampler_u inverts the training map when L_s = L
    u = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
    torch.testing.assert_close(sampler_u(truncated_lognormal_sigma(u, prob_length=0.93), truncation_t=0.93), u)


def test_truncated_grids_of_the_shipped_samplers():
    g = truncated_karras_grid(200, 0.008, 80, 100, 0.9)          # ImageNet stage 2
    assert g.numel() - 1 == 100 and float(g[0]) == pytest.approx(0.869, abs=1e-3) and float(g[-1]) == 0
    assert truncated_karras_grid(150, 0.008, 80, 7, 0.95).numel() - 1 == 54   # CelebA-HQ
    assert truncated_karras_grid(40, 0.008, 80, 7, 0.9).numel() - 1 == 14    # cpu-tiny
    with pytest.raises(ConfigError, match="truncation_sigma"):
        truncated_karras_grid(40, 0.008, 80, 7, 0.005)


def test_paper_preset_nfe():
    imagenet = RelayConfig(**RelayDiffusion.presets["imagenet256"])
    assert relay_nfe(imagenet, guidance=3.5) == 511 + 2 * 199      # stage 1 unguided, stage 2 CFG
    celeba = RelayConfig(**RelayDiffusion.presets["celebahq256"])
    assert relay_nfe(celeba) == 239 + 107


# ---- the sampler update --------------------------------------------------------------------------

def test_update_preserves_total_noise_variance():
    s, s_n, s_blk = 2, 0.2, 0.15
    t_cur, t_next = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.35, dtype=torch.float64)
    g = noise_gamma(t_cur, t_next, s_n)
    assert float(g ** 2 * t_cur ** 2 + s_n ** 2 * t_next ** 2) == pytest.approx(float(t_next ** 2), rel=1e-12)
    y = torch.rand(16, 3, 32, 32, generator=_gen(6), dtype=torch.float64) * 2 - 1
    a = lambda t: blur_factors(blur_sigma(sampler_u(t), 3.0), s)          # noqa: E731
    noise = lambda: (torch.randn(y.shape, generator=gen, dtype=torch.float64)   # noqa: E731
                     + s_blk * block_noise(torch.randn(y.shape, generator=gen, dtype=torch.float64), s))
    gen = _gen(7)
    n_cur, n_fresh = noise(), noise()
    x = patch_idct(scale_coefficients(patch_dct(y, s), a(t_cur), s), s) + t_cur * n_cur
    d = (patch_dct(x, s) - patch_dct(y, s)) / t_cur                       # oracle denoiser D = y
    x_next = relay_update(x, d, t_cur, t_next, a(t_cur), a(t_next), s, s_n, n_fresh)
    resid = x_next - patch_idct(scale_coefficients(patch_dct(y, s), a(t_next), s), s)
    torch.testing.assert_close(resid, g * t_cur * n_cur + s_n * t_next * n_fresh, atol=1e-12, rtol=0)
    std = float(resid.std()) / math.sqrt(1 + s_blk ** 2)
    assert std == pytest.approx(float(t_next), rel=0.02)


def test_blur_sampler_nfe_noise_and_oracle_denoiser():
    s = 2
    grid = truncated_karras_grid(40, 0.008, 80, 7, 0.9)
    target = torch.rand(2, 3, 8, 8, generator=_gen(8), dtype=torch.float64) * 2 - 1
    calls, draws = [], []

    def denoise(x, sigma):
        calls.append(float(sigma))
        return target.float()

    def noise(like):
        draws.append(1)
        return torch.randn(like.shape, generator=gen, dtype=like.dtype)

    gen = _gen(9)
    x_up = F.interpolate(F.avg_pool2d(target, s), scale_factor=s, mode="nearest")
    out, nfe = blur_heun_sampler(denoise, x_up, grid, lambda t: blur_factors(blur_sigma(sampler_u(t), 3.0), s),
                                 noise, s)
    k = grid.numel() - 1
    assert nfe == len(calls) == 2 * k - 1
    assert len(draws) == 1 + 2 * (k - 1)                 # start + (Euler, Heun) per non-final step
    assert calls[0] == pytest.approx(float(grid[0]), rel=1e-6) and 0 not in calls
    torch.testing.assert_close(out, target.float().double())            # the last step returns D


# ---- the method: training input and loss ---------------------------------------------------------

def test_relay_training_input_reconstructs_from_the_streams():
    m = build_method("relay", "cpu-tiny")
    cfg = m.config
    y = torch.rand(3, 3, 32, 32, generator=_gen(10)) * 2 - 1
    x, sigma, sig_b, u = m.relay_inputs(y, StackedRandom([4, 5, 6]))
    rng = StackedRandom([4, 5, 6])
    u2 = rng.rand((3,), dtype=torch.float64).clamp(min=train_u_floor(prob_length=cfg.prob_length))
    eps, eps2 = rng.randn(y.shape), rng.randn(y.shape)
    torch.testing.assert_close(u, u2)
    torch.testing.assert_close(sig_b, blur_sigma(u2, 3.0))
    torch.testing.assert_close(sigma, truncated_lognormal_sigma(u2, prob_length=0.93))
    want = dct_blur(y.double(), 2, sig_b) + sigma.reshape(-1, 1, 1, 1) * (eps + 0.15 * block_noise(eps2, 2))
    torch.testing.assert_close(x.double(), want, atol=1e-5, rtol=1e-5)
    # σ stays inside the truncated range
    _, sig_many, _, _ = m.relay_inputs(torch.zeros(64, 3, 32, 32), StackedRandom(list(range(64))))
    assert float(sig_many.min()) >= 7.0e-3 and float(sig_many.max()) <= 1.7702


def test_relay_loss_weight_clamped_and_target_sharp():
    m = build_method("relay", "cpu-tiny", {"loss_weight_max": 10.0, "label_dropout": 0.0})

    class Zero(torch.nn.Module):
        def forward(self, x, sigma, labels=None, text=None):
            return torch.zeros_like(x)

    m.relay = Zero()
    stage = m.stages()[1]
    batch = m.example_batch(stage, 4)
    loss, logs = m.loss(batch, stage)
    _, sigma, _, _ = m.relay_inputs(batch.top(), StackedRandom([0, 1, 2, 3]))
    w = edm_loss_weight(sigma).clamp(max=10.0)
    assert float(w.max()) == 10.0 and float(edm_loss_weight(sigma).max()) > 10.0    # the clamp is active
    want = (w.float() * (batch.top() ** 2).mean(dim=(1, 2, 3))).mean()   # D = 0: error against the SHARP y
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert logs["sigma_mean"] == pytest.approx(float(sigma.mean()), rel=1e-6)


def test_stages_train_their_own_network_at_their_resolution():
    m = build_method("relay", "cpu-tiny")
    base, relay = m.stages()
    assert (base.name, base.resolutions, base.trainable) == ("base", (16,), ("base",))
    assert (relay.name, relay.resolutions, relay.trainable) == ("relay", (32,), ("relay",))
    for stage, used, unused in ((base, "base", "relay"), (relay, "relay", "base")):
        for mod in m.modules().values():
            mod.zero_grad(set_to_none=True)
        loss, _ = m.loss(m.example_batch(stage, 2), stage)
        loss.backward()
        assert any(p.grad is not None for p in m.modules()[used].parameters())
        assert all(p.grad is None for p in m.modules()[unused].parameters())


# ---- the method: sampling ------------------------------------------------------------------------

def _perturbed(preset: str = "cpu-tiny", **over) -> RelayDiffusion:
    m = build_method("relay", preset, over)
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in m.modules().values():
            mod.eval()
            for p in mod.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return m


def test_stage2_starts_from_the_upsampled_stage1_sample():
    m = _perturbed()
    seen = []
    m.relay.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    cond = m.example_condition(2)
    x, nfe = m.sample(StackedRandom([3, 4]), cond, steps=4)
    rng = StackedRandom([3, 4])
    n1, n2 = m._steps(4)
    x_low, nfe1 = m.sample_base(rng, cond, n1)
    up = m.upsample(x_low)
    assert up.shape[-1] == 32 and torch.equal(up[..., ::2, ::2], x_low) and torch.equal(up[..., 1::2, 1::2], x_low)
    t0 = truncated_karras_grid(n2, 0.008, 80, 7, 0.9)[0]
    start = up + t0 * m.relay_noise(rng, up)
    torch.testing.assert_close(seen[0], start.float(), atol=1e-6, rtol=1e-6)
    assert nfe == nfe1 + len(seen) == m.sampling_nfe(4)


def test_cfg_only_in_stage2_and_early_checkpoint_sampling():
    m = _perturbed()
    batch_sizes = {"base": [], "relay": []}
    for name, mod in m.modules().items():
        mod.register_forward_pre_hook(lambda mod, args, name=name: batch_sizes[name].append(args[0].shape[0]))
    cond = m.example_condition(3)
    plain, nfe1 = m.sample(StackedRandom([0, 1, 2]), cond, steps=3)
    guided_x, nfe2 = m.sample(StackedRandom([0, 1, 2]), cond, steps=3, guidance=3.0)
    assert set(batch_sizes["base"]) == {3}                       # stage 1 never guided
    assert 6 in batch_sizes["relay"] and 3 in batch_sizes["relay"]
    assert nfe2 == m.sampling_nfe(3, guidance=3.0) and nfe2 > nfe1 == m.sampling_nfe(3)
    assert not torch.allclose(plain, guided_x)
    # while only stage 1 has been entered, sampling returns the nearest-upsampled stage-1 image
    m._enter(0)
    early, nfe = m.sample(StackedRandom([0, 1, 2]), cond, steps=3)
    low, nfe_low = m.sample_base(StackedRandom([0, 1, 2]), cond, 3)
    assert nfe == nfe_low
    torch.testing.assert_close(early, m.upsample(low.float().clamp(-1, 1)))


def test_sde_heun_stage1_sampler():
    sig = torch.tensor([3.0, 1.0, 0.3, 0.0], dtype=torch.float64)
    const = torch.full((2, 3, 4, 4), 0.25)
    calls = []

    def denoise(x, sigma):
        calls.append(float(sigma))
        return const

    rng = StackedRandom([1, 2])
    out, nfe = sde_heun_sampler(denoise, rng.randn((2, 3, 4, 4)), sig, rng, 0.05)
    assert nfe == len(calls) == 2 * 3 - 1
    torch.testing.assert_close(out.float(), const)              # last step: a = 0, g = 0 → x = D
    m = _perturbed("cpu-tiny", base_solver="sde_heun", base_steps=3)
    x, n = m.sample_base(StackedRandom([0]), m.example_condition(1), 3)
    assert n == 5 and torch.isfinite(x).all()


def test_output_enhancement():
    x = torch.rand(2, 3, 8, 8, generator=_gen(11)) * 2 - 1
    torch.testing.assert_close(enhance(x, brightness=1.06), ((x + 1) * 1.06 - 1).clamp(-1, 1))
    gray = x[:, :1].expand(2, 3, 8, 8)
    torch.testing.assert_close(enhance(gray, color=0.5), gray, atol=1e-6, rtol=0)       # colour: no-op on gray
    flat = torch.full((1, 3, 4, 4), 0.3)
    torch.testing.assert_close(enhance(flat, contrast=0.9), flat, atol=1e-6, rtol=0)     # contrast: no-op on flat
    assert float(enhance(x, contrast=0.5).std()) < float(x.std())


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="up_scale"):
        build_method("relay", "cpu-tiny", {"up_scale": 3})
    with pytest.raises(ConfigError, match="truncation_sigma"):
        build_method("relay", "cpu-tiny", {"truncation_sigma": 0.001})
    with pytest.raises(ConfigError, match="base_unet"):
        build_method("relay", "cpu-tiny", {"base_unet": "nope"})
    with pytest.raises(ConfigError, match="num_classes"):
        build_method("relay", "cpu-tiny", {"num_classes": 0})
    assert isinstance(RelayConfig(**RelayDiffusion.presets["celebahq256"]), RelayConfig)
