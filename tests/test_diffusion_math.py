"""Oracle tests of the shared diffusion math (CARDS.md §0, §1, §3, §4, §12)."""
from __future__ import annotations

import math

import pytest
import torch

from bench.diffusion import edm, guidance, param, samplers, schedules
from bench.diffusion.rng import StackedRandom
from bench.method import ConfigError

f64 = torch.float64


def close(a, b, tol):
    return abs(float(a) - float(b)) <= tol


# ---- §1 EDM ----------------------------------------------------------------------------------

def test_edm_precond_oracles():
    c_skip, c_out, c_in, c_noise = edm.edm_precond(0.5)
    assert close(c_skip, 0.5, 1e-12)
    assert close(c_out, 0.3535534, 1e-7)
    assert close(c_in, 1.4142136, 1e-7)
    assert close(c_noise, math.log(0.5) / 4, 1e-12)
    assert close(edm.edm_precond(1.0)[3], 0.0, 1e-15)
    assert close(edm.edm_loss_weight(0.5), 8.0, 1e-12)


def test_edm_loss_weight_makes_effective_target_unit_variance():
    sd = 0.5
    sig = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=f64)
    c_skip, c_out, _, _ = edm.edm_precond(sig, sd)
    # F target (y − c_skip (y + σ n))/c_out with var(y) = σ_d², var(n) = 1
    var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sig ** 2) / c_out ** 2
    torch.testing.assert_close(var, torch.ones_like(var))
    torch.testing.assert_close(edm.edm_loss_weight(sig, sd), 1 / c_out ** 2)
    assert edm.edm_precond(torch.tensor(0.5))[0].dtype == torch.float32  # dtype kept


def test_lognormal_sigma_quantiles_and_sampling():
    q = edm.lognormal_sigma_quantile(torch.tensor([0.05, 0.5, 0.95], dtype=f64))
    assert close(q[0], 0.0418, 5e-5) and close(q[1], 0.301, 5e-4) and close(q[2], 2.168, 5e-4)
    n = torch.special.ndtri(torch.tensor([0.05, 0.5, 0.95], dtype=f64))
    torch.testing.assert_close(edm.lognormal_sigma(n), q)
    rng = StackedRandom(range(4000))
    s = edm.lognormal_sigma(rng)
    assert s.shape == (4000,)
    assert close((s < q[1].item()).double().mean(), 0.5, 0.03)  # empirical median


def test_karras_grid_oracles():
    t = edm.karras_sigmas(18)
    assert t.shape == (19,) and t.dtype == f64
    assert close(t[0], 80.0, 1e-9) and close(t[1], 57.58598, 5e-6) and close(t[2], 40.78557, 5e-6)
    assert close(t[17], 0.002, 1e-12) and t[18] == 0
    assert bool((t[1:] < t[:-1]).all())
    assert edm.karras_sigmas(5, append_zero=False).shape == (5,)
    with pytest.raises(ConfigError, match="steps"):
        edm.karras_sigmas(0)


class Gaussian:
    """Exact denoiser of data ~ N(mu, s²) per pixel: D(x;σ) = mu + s²/(s²+σ²)(x − mu). Records calls."""

    def __init__(self, mu=0.3, s=0.4):
        self.mu, self.s, self.calls = mu, s, []

    def __call__(self, x, sigma):
        self.calls.append((x.dtype, sigma.dtype, tuple(sigma.shape), float(sigma)))
        k = self.s ** 2 / (self.s ** 2 + sigma ** 2)
        return self.mu + k * (x - self.mu)


def test_edm_sampler_nfe_dtypes_and_point_mass():
    x0 = torch.tensor([0.7, -0.2, 0.1, 0.9]).view(4, 1, 1, 1)
    sig = edm.karras_sigmas(18)
    rng = StackedRandom([0, 1, 2, 3])
    calls = []

    def point(x, sigma):  # data = a single point x0 per image
        calls.append((x.dtype, sigma.dtype, sigma.ndim))
        return x0.expand_as(x)

    out, nfe = edm.edm_sampler(point, rng.randn((4, 1, 2, 2)), sig, rng=rng)
    assert nfe == 2 * 18 - 1 == len(calls)
    assert all(c == (torch.float32, torch.float32, 0) for c in calls)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0.expand(4, 1, 2, 2), atol=1e-6, rtol=0)
    out_e, nfe_e = edm.edm_sampler(point, rng.randn((4, 1, 2, 2)), sig, rng=rng, solver="euler",
                                   S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)
    assert nfe_e == 18
    torch.testing.assert_close(out_e, x0.expand(4, 1, 2, 2), atol=1e-6, rtol=0)


def test_edm_sampler_solves_gaussian_probability_flow():
    # exact ODE for x ~ N(mu, s²): x_0 − mu = (x_T − mu)·s/√(s² + σ_max²), x_T = σ_max·noise
    mu, s, smax = 0.3, 0.4, 80.0
    noise = StackedRandom(range(8)).randn((8, 1, 4, 4))
    exact = mu + (smax * noise.double() - mu) * s / math.sqrt(s * s + smax * smax)

    def err(n, solver):
        out, _ = edm.edm_sampler(Gaussian(mu, s), noise, edm.karras_sigmas(n, sigma_max=smax), solver=solver)
        return ((out.double() - exact) / (smax * noise.double() - mu)).abs().max().item()

    heun18, heun36, euler18, euler36 = err(18, "heun"), err(36, "heun"), err(18, "euler"), err(36, "euler")
    assert heun18 < 5e-4  # relative error of the ODE map's gain
    assert 3.5 < heun18 / heun36 < 5.0    # second order
    assert 1.7 < euler18 / euler36 < 2.3  # first order


def test_edm_sampler_stochastic_matches_data_distribution():
    mu, s = 0.3, 0.4
    # 72 steps: at 18 steps the discretisation alone inflates the std by ~6% for this data
    rng = StackedRandom(range(64))
    out, _ = edm.edm_sampler(Gaussian(mu, s), rng.randn((64, 1, 8, 8)), edm.karras_sigmas(72), rng=rng,
                             S_churn=40, S_min=0.05, S_max=50, S_noise=1.0)
    assert close(out.mean(), mu, 0.02) and close(out.std(), s, 0.02)


def test_churn_only_inside_window_and_draws_counted():
    n = 10
    sig = edm.karras_sigmas(n)
    s_min, s_max, churn = 1.0, 10.0, 2.0  # γ = min(2/10, √2−1) = 0.2
    inside = [float(t) for t in sig[:-1] if s_min <= t <= s_max]
    assert 0 < len(inside) < n
    base_noise = StackedRandom([5, 6]).randn((2, 1, 2, 2))

    den = Gaussian()
    rng = StackedRandom([5, 6])
    edm.edm_sampler(den, base_noise, sig, rng=rng, S_churn=churn, S_min=s_min, S_max=s_max, solver="euler")
    seen = [c[3] for c in den.calls]
    for t, t_hat in zip(sig[:-1].tolist(), seen):
        expect = t * 1.2 if s_min <= t <= s_max else t
        assert close(t_hat, expect, 1e-5 * expect), (t, t_hat)
    # exactly one noise draw per churned step: the stream continues where k float64 draws end
    ref = StackedRandom([5, 6])
    for _ in inside:
        ref.randn((2, 1, 2, 2), dtype=f64)
    assert torch.equal(rng.randn((2, 3), dtype=f64), ref.randn((2, 3), dtype=f64))

    det, _ = edm.edm_sampler(Gaussian(), base_noise, sig, rng=StackedRandom([5, 6]))
    none_inside, _ = edm.edm_sampler(Gaussian(), base_noise, sig, rng=StackedRandom([5, 6]), S_churn=churn,
                                     S_min=100.0, S_max=200.0)
    some_inside, _ = edm.edm_sampler(Gaussian(), base_noise, sig, rng=StackedRandom([5, 6]), S_churn=churn,
                                     S_min=s_min, S_max=s_max)
    assert torch.equal(det, none_inside)
    assert (det - some_inside).abs().max() > 1e-3


def test_edm_sampler_per_image_reproducible_across_batches():
    def run(seeds):
        rng = StackedRandom(seeds)
        x, _ = edm.edm_sampler(Gaussian(), rng.randn((len(seeds), 3, 4, 4)), edm.karras_sigmas(12), rng=rng,
                               S_churn=30, S_min=0.05, S_max=50, S_noise=1.003)
        return x

    big, small = run([3, 7, 11, 19]), run([19, 7])
    assert torch.equal(big[3], small[0]) and torch.equal(big[1], small[1])
    assert not torch.equal(big[0], big[1])


def test_edm_sampler_rejects_bad_grid():
    with pytest.raises(ConfigError, match="sigmas"):
        edm.edm_sampler(Gaussian(), torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 2.0, 0.0]))


# ---- §3 SiD schedules ------------------------------------------------------------------------

def test_sid_cosine_endpoints_and_shifts():
    lam = schedules.logsnr_cosine(torch.tensor([0.0, 0.5, 1.0], dtype=f64))
    torch.testing.assert_close(lam, torch.tensor([15.0, 0.0, -15.0], dtype=f64), atol=1e-9, rtol=0)
    t = torch.linspace(0, 1, 11, dtype=f64)
    for d, shift in ((128, -1.386), (256, -2.773), (512, -4.159)):
        diff = schedules.logsnr_cosine_shifted(t, d) - schedules.logsnr_cosine(t)
        assert torch.allclose(diff, torch.full_like(diff, shift), atol=5e-4)
    assert bool((schedules.logsnr_cosine(t)[1:] < schedules.logsnr_cosine(t)[:-1]).all())
    torch.testing.assert_close(schedules.t_from_logsnr_cosine(schedules.logsnr_cosine(t)), t)
    assert schedules.logsnr_cosine(torch.tensor([0.5])).dtype == torch.float32
    for bad in (1.5, [0.2, 1.5], -0.1):           # numbers / lists (what users pass) are checked ...
        with pytest.raises(ConfigError, match="t: expected"):
            schedules.logsnr_cosine(bad)
    # ... tensors are not: they come from the samplers and trainers, and a check would cost a host read per step
    assert torch.isnan(schedules.logsnr_cosine(torch.tensor([1.5]))).all()


def test_sid_interpolated_orientation():
    # strong shift of the LOW reference at high noise (t → 1), weak shift of the HIGH one at t → 0
    d, lo, hi = 512, 32, 256
    ends = torch.tensor([0.0, 1.0], dtype=f64)
    interp = schedules.logsnr_cosine_interpolated(ends, d, lo, hi)
    assert close(interp[0], 15.0 + 2 * math.log(hi / d), 1e-9)
    assert close(interp[1], -15.0 + 2 * math.log(lo / d), 1e-9)
    mid = schedules.logsnr_cosine_interpolated(torch.tensor(0.25, dtype=f64), d, lo, hi)
    expect = 0.25 * schedules.logsnr_cosine_shifted(0.25, d, lo) + 0.75 * schedules.logsnr_cosine_shifted(0.25, d, hi)
    assert close(mid, expect, 1e-12)


def test_vp_ve_conversions():
    lam = torch.linspace(-12, 12, 25, dtype=f64)
    a, s = schedules.alpha_sigma_from_logsnr(lam)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(a))
    torch.testing.assert_close(torch.log(a ** 2 / s ** 2), lam)
    sve = schedules.sigma_from_logsnr(lam)
    torch.testing.assert_close(sve, s / a)
    torch.testing.assert_close(schedules.logsnr_from_sigma(sve), lam)
    torch.testing.assert_close(schedules.alpha_bar_to_sigma(a ** 2), sve)
    torch.testing.assert_close(schedules.logsnr_from_alpha_bar(schedules.alpha_bar_from_logsnr(lam)), lam)
    a2, s2 = schedules.alpha_sigma_from_ve_sigma(sve)
    torch.testing.assert_close(a2, a)
    torch.testing.assert_close(s2, s)


# ---- §2 / §4 discrete schedules ---------------------------------------------------------------

def test_ddpm_schedules():
    T = 1000
    ab = schedules.ddpm_cosine_alpha_bar(T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 250, 500, 900):  # unclipped region: ᾱ_t = f((t+1)/T)/f(0)
        assert close(ab[t], f((t + 1) / T) / f(0), 1e-12)
    assert close(schedules.ddpm_cosine_betas(T).max(), 0.999, 1e-15)
    assert ab.shape == (T,) and bool((ab[1:] < ab[:-1]).all())
    b = schedules.ddpm_linear_betas(T)
    assert close(b[0], 1e-4, 1e-15) and close(b[-1], 0.02, 1e-15)
    assert close(schedules.ddpm_linear_betas(500)[-1], 0.04, 1e-15)
    torch.testing.assert_close(schedules.ddpm_linear_alpha_bar(T), torch.cumprod(1 - b, 0))


def test_mdm_gamma_oracles():
    g = schedules.mdm_gammas(1000)
    assert g.shape == (1001,) and g[0] == 1.0
    assert close(g[1], 0.999959, 5e-7)
    lam = schedules.logsnr_from_alpha_bar
    assert close(lam(g[1]), 10.095, 5e-4)
    assert close(lam(g[500]), -0.025, 5e-4)
    assert close(lam(schedules.shift_gamma(g[500], 4, 1)), -1.411, 5e-4)    # 256 level, p = 1
    assert close(lam(schedules.shift_gamma(g[500], 16, 2)), -5.570, 5e-4)   # 1024 level, p = 2 (SNR/256)
    sh = schedules.shift_gamma(g, 4, 1)
    assert sh[0] == 1.0 and bool((sh[1:] < sh[:-1]).all())
    torch.testing.assert_close(lam(sh[1:]), lam(g[1:]) - math.log(4))
    torch.testing.assert_close(schedules.shift_gamma(g, 1, 2), g)


def test_resampled_timesteps():
    assert schedules.resampled_timesteps(10, 4).tolist() == [9, 7, 4, 2, 0]  # ratio 2.2
    assert schedules.resampled_timesteps(1000, 1000).tolist() == list(range(1000, -1, -1))
    g = schedules.resampled_timesteps(1000, 250)
    assert g.shape == (251,) and g[-1] == 0 and bool((g[1:] < g[:-1]).all()) and g.dtype == torch.int64
    with pytest.raises(ConfigError, match="sampling steps"):
        schedules.resampled_timesteps(1000, 0)


# ---- §0 parameterizations -------------------------------------------------------------------

def _vp_batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g, dtype=f64) * 2 - 1
    eps = torch.randn(n, 3, 4, 4, generator=g, dtype=f64)
    lam = torch.linspace(-6, 6, n, dtype=f64)
    a, s = schedules.alpha_sigma_from_logsnr(lam)
    return x, eps, lam, a, s, param.diffuse(x, eps, a, s)


def test_parameterization_round_trips():
    x, eps, _, a, s, z = _vp_batch()
    v = param.v_from_x_eps(x, eps, a, s)
    torch.testing.assert_close(param.x_from_eps(z, eps, a, s), x)
    torch.testing.assert_close(param.eps_from_x(z, x, a, s), eps)
    torch.testing.assert_close(param.x_from_v(z, v, a, s), x)
    torch.testing.assert_close(param.eps_from_v(z, v, a, s), eps)
    torch.testing.assert_close(param.v_from_x(z, x, a, s), v)
    with pytest.raises(ValueError, match="broadcast"):
        param.x_from_eps(z, eps, a[:3], s)


def test_loss_equivalence_identities():
    x, eps, lam, a, s, z = _vp_batch(1)
    x_hat = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=f64)
    eps_hat, v_hat = param.eps_from_x(z, x_hat, a, s), param.v_from_x(z, x_hat, a, s)
    v = param.v_from_x_eps(x, eps, a, s)
    per = lambda d: (d ** 2).flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(per(eps_hat - eps), param.eps_mse_per_x_mse(lam) * per(x_hat - x))
    torch.testing.assert_close(per(v_hat - v), param.v_mse_per_x_mse(lam) * per(x_hat - x))


# ---- samplers ------------------------------------------------------------------------------

def test_ancestral_step_equals_gamma_form_and_ddim_eta1():
    x, eps, _, _, _, _ = _vp_batch(2)
    lt = torch.linspace(-4, 3, 6, dtype=f64)
    ls = lt + torch.linspace(0.3, 2.0, 6, dtype=f64)
    at, st = schedules.alpha_sigma_from_logsnr(lt)
    as_, ss = schedules.alpha_sigma_from_logsnr(ls)
    z = param.diffuse(x, eps, at, st)
    x_hat = x.clamp(-0.8, 0.8)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=f64)
    a = samplers.ddpm_ancestral_step(z, x_hat, lt, ls, noise)
    b = samplers.ddpm_posterior_gamma_step(z, x_hat, at ** 2, as_ ** 2, noise)
    c = samplers.ddim_step(z, x_hat, None, as_, ss, eta=1.0, noise=noise, alpha_t=at, sigma_t=st)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, samplers.ddpm_ancestral_step(z, x_hat, lt, ls))  # noise is used
    torch.testing.assert_close(samplers.ddpm_ancestral_step(z, x_hat, lt, torch.full_like(ls, math.inf)), x_hat)


def test_gamma_step_on_mdm_grid_float32_and_final_step():
    g = schedules.mdm_gammas(1000)
    x, eps, _, _, _, _ = _vp_batch(6)
    z = param.diffuse(x, eps, g[3].sqrt(), (1 - g[3]).sqrt())
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=f64)
    ref = samplers.ddpm_posterior_gamma_step(z, x, g[3], g[2], noise)
    low = samplers.ddpm_posterior_gamma_step(z.float(), x.float(), g[3], g[2], noise.float())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), ref, atol=1e-5, rtol=0)  # coefficients formed in float64
    torch.testing.assert_close(samplers.ddpm_posterior_gamma_step(z, x * 0.5, g[3], g[0], noise), x * 0.5)


def test_ancestral_step_has_the_true_marginal():
    # x̂ = x exactly: z_s ~ q(z_s | z_t, x) with z_t ~ q(z_t | x) must be N(α_s x, σ_s²)
    g = torch.Generator().manual_seed(4)
    x, lt, ls = 0.6, -1.0, 2.0
    at, st = schedules.alpha_sigma_from_logsnr(torch.tensor(lt, dtype=f64))
    as_, ss = schedules.alpha_sigma_from_logsnr(torch.tensor(ls, dtype=f64))
    z = at * x + st * torch.randn(200_000, generator=g, dtype=f64)
    zs = samplers.ddpm_ancestral_step(z, torch.full_like(z, x), lt, ls, torch.randn(200_000, generator=g, dtype=f64))
    assert close(zs.mean(), as_ * x, 0.005) and close(zs.std(), ss, 0.005)


def test_ddim_eta0_deterministic_and_consistent():
    x, eps, _, a, s, z = _vp_batch(5)
    x_hat = x * 0.9
    eps_hat = param.eps_from_x(z, x_hat, a, s)
    a_s, s_s = schedules.alpha_sigma_from_logsnr(torch.linspace(-3, 8, 6, dtype=f64))
    z1 = samplers.ddim_step(z, x_hat, eps_hat, a_s, s_s)
    z2 = samplers.ddim_step(z, x_hat, eps_hat, a_s, s_s, noise=torch.randn_like(z))
    assert torch.equal(z1, z2)
    # the new point implies the same x̂ and ε̂
    torch.testing.assert_close(param.x_from_eps(z1, eps_hat, a_s, s_s), x_hat)
    torch.testing.assert_close(samplers.ddim_step(z, x_hat, None, a_s, s_s, alpha_t=a, sigma_t=s), z1)


def test_vp_ancestral_sampler_gaussian_data_and_reproducibility():
    mu, sd = 0.2, 0.3

    def predict_x(z, lam):  # exact E[x | z] for x ~ N(mu, sd²)
        a, s = schedules.alpha_sigma_from_logsnr(lam)
        return mu + a * sd ** 2 / (a * a * sd ** 2 + s * s) * (z - a * mu)

    grid = schedules.logsnr_cosine(torch.linspace(1, 0, 65, dtype=f64))
    rng = StackedRandom(range(256))
    out, nfe = samplers.vp_ancestral_sampler(predict_x, rng.randn((256, 1, 4, 4)), grid, rng, clip_x=False)
    assert nfe == 64 and out.dtype == torch.float32
    assert close(out.mean(), mu, 0.02) and close(out.std(), sd, 0.02)

    def run(seeds):
        r = StackedRandom(seeds)
        return samplers.vp_ancestral_sampler(predict_x, r.randn((len(seeds), 3, 4, 4)), grid[:20], r)[0]

    big, small = run([1, 2, 3]), run([3])
    assert torch.equal(big[2], small[0])
    x0 = torch.tensor(0.4)
    pt, _ = samplers.vp_ancestral_sampler(lambda z, lam: x0.expand_as(z), torch.randn(2, 1, 2, 2),
                                          torch.tensor([-5.0, 0.0, math.inf]), StackedRandom([0, 1]))
    torch.testing.assert_close(pt, x0.expand(2, 1, 2, 2))


# ---- guidance ------------------------------------------------------------------------------

def test_cfg_combine_identities():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    torch.testing.assert_close(guidance.cfg_combine(u, c, 1.0), c)
    torch.testing.assert_close(guidance.cfg_combine(u, c, 0.0), u)
    w = 3.5
    torch.testing.assert_close(guidance.cfg_combine(u, c, w), w * c - (w - 1) * u)  # RDM's form
    lst = guidance.cfg_combine([u, u * 2], [c, c * 2], w)
    torch.testing.assert_close(lst[1], 2 * guidance.cfg_combine(u, c, w))
    per = guidance.cfg_combine(u, c, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(per[0], u[0])
    torch.testing.assert_close(per[1], c[1])


def test_guided_batches_once_and_counts_nfe():
    sizes = []

    def net(x, sigma, labels):
        sizes.append(x.shape[0])
        return x * sigma + labels.view(-1, 1).to(x.dtype)

    x = torch.randn(4, 2)
    sig = torch.tensor(0.7)
    lab, null = torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long)
    out, mult = guidance.guided(net, x, (sig, lab), (sig, null), 1.0)
    assert mult == 1 and sizes == [4]
    torch.testing.assert_close(out, net(x, sig, lab))
    sizes.clear()
    out, mult = guidance.guided(net, x, {"sigma": sig, "labels": lab}, {"sigma": sig, "labels": null}, 2.5)
    assert mult == 2 and sizes == [8]
    torch.testing.assert_close(out, guidance.cfg_combine(net(x, sig, null), net(x, sig, lab), 2.5))
    sizes.clear()
    out, mult = guidance.guided(net, x, (sig, lab), (sig, null), 2.5, sigma=sig, interval=(1.0, 5.0))
    assert mult == 1 and sizes == [4]
    torch.testing.assert_close(out, net(x, sig, lab))
    _, mult = guidance.guided(net, x, (sig, lab), (sig, null), 2.5, sigma=sig, interval=(0.5, 5.0))
    assert mult == 2
    with pytest.raises(ValueError, match="differs"):
        guidance.guided(net, x, (sig, lab), (torch.tensor(0.3), null), 2.0)


def test_guided_denoiser_nfe_flows_into_edm_sampler():
    den = Gaussian()

    def guided_den(x, sigma):  # cond/uncond = two Gaussians; guide only for σ in [0.1, 10]
        return guidance.guided(lambda xx, m: den(xx, sigma) + m.view(-1, 1, 1, 1), x,
                               (torch.full((x.shape[0],), 0.1),), (torch.zeros(x.shape[0]),), 2.0,
                               sigma=sigma, interval=(0.1, 10.0))

    sig = edm.karras_sigmas(8)
    _, nfe = edm.edm_sampler(guided_den, torch.zeros(2, 1, 2, 2), sig)
    evals = sig[:-1].tolist() + sig[1:-1].tolist()  # Heun: one call at t_i, one at t_{i+1} unless 0
    expect = sum(2 if 0.1 <= float(torch.tensor(t, dtype=torch.float32)) <= 10.0 else 1 for t in evals)
    assert nfe == expect and 2 * 8 - 1 < nfe < 2 * (2 * 8 - 1)
