"""VP samplers: the DDPM ancestral (posterior) step in logSNR form and in MDM's gamma form, the DDIM
step, and a generic ancestral sampler over a logSNR grid (SiD-style). CARDS.md §0, §3, §4.

Coefficients may be numbers, 0-dim tensors or per-example (N,) tensors (see param.batch_coef).
"""
from __future__ import annotations

from typing import Callable

import torch

from bench.diffusion.param import batch_coef
from bench.diffusion.rng import StackedRandom
from bench.diffusion.schedules import alpha_sigma_from_logsnr
from bench.method import ConfigError

Coef = float | int | torch.Tensor


def _t(c: Coef, like: torch.Tensor) -> torch.Tensor:
    """Coefficient as a float64 tensor on ``like``'s device, shaped to broadcast over the batch
    (coefficients are formed in float64 and cast to the data's dtype only when applied)."""
    c = torch.as_tensor(c).to(dtype=torch.float64, device=like.device)
    return batch_coef(c, like)


def _apply(coef_z: torch.Tensor, z: torch.Tensor, coef_x: torch.Tensor, x: torch.Tensor, std: torch.Tensor,
           noise: torch.Tensor | None) -> torch.Tensor:
    """``coef_z·z + coef_x·x (+ std·noise)`` with float64 coefficients cast to z's dtype."""
    dt = z.dtype
    out = coef_z.to(dt) * z + coef_x.to(dt) * x
    return out if noise is None else out + std.clamp_min(0).sqrt().to(dt) * noise


def ddpm_ancestral_step(z_t: torch.Tensor, x_hat: torch.Tensor, logsnr_t: Coef, logsnr_s: Coef,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``z_s ~ q(z_s | z_t, x = x̂)`` for s less noisy than t (VDM posterior in logSNR form):
    ``c = −expm1(λ_t − λ_s)``, ``μ = α_s (z_t (1−c)/α_t + c x̂)``, ``Var = σ_s² c``.
    Without ``noise`` the posterior mean is returned. ``λ_s = +inf`` gives exactly x̂; λ_t must be finite."""
    lt, ls = _t(logsnr_t, z_t), _t(logsnr_s, z_t)
    c = -torch.expm1(lt - ls)
    a_t, _ = alpha_sigma_from_logsnr(lt)
    a_s, s_s = alpha_sigma_from_logsnr(ls)
    return _apply(a_s * (1.0 - c) / a_t, z_t, a_s * c, x_hat, s_s * s_s * c, noise)


def ddpm_posterior_gamma_step(z_t: torch.Tensor, x_hat: torch.Tensor, gamma_t: Coef, gamma_s: Coef,
                              noise: torch.Tensor | None = None) -> torch.Tensor:
    """The same posterior in MDM's gamma (= ᾱ) form: ``α = γ_t/γ_s``, ``β = 1 − α``,
    ``μ = x̂ β √γ_s/(1−γ_t) + z_t √α (1−γ_s)/(1−γ_t)``, ``Var = β̃ = β (1−γ_s)/(1−γ_t)``."""
    g_t, g_s = _t(gamma_t, z_t), _t(gamma_s, z_t)
    alpha = g_t / g_s
    beta = 1.0 - alpha
    return _apply(alpha.sqrt() * (1.0 - g_s) / (1.0 - g_t), z_t, beta * g_s.sqrt() / (1.0 - g_t), x_hat,
                  beta * (1.0 - g_s) / (1.0 - g_t), noise)


def ddim_step(z_t: torch.Tensor, x_hat: torch.Tensor, eps_hat: torch.Tensor | None, alpha_s: Coef,
              sigma_s: Coef, eta: float = 0.0, noise: torch.Tensor | None = None, *,
              alpha_t: Coef | None = None, sigma_t: Coef | None = None) -> torch.Tensor:
    """DDIM: ``z_s = α_s x̂ + √(σ_s² − σ̃²) ε̂ + σ̃ n`` with ``σ̃² = η² σ_s² (1 − SNR_t/SNR_s)``.

    η = 0 is deterministic (``noise`` unused); η = 1 equals the ancestral step. ``eps_hat`` may be
    None when α_t, σ_t are given (then ``ε̂ = (z_t − α_t x̂)/σ_t``); η > 0 needs α_t, σ_t and noise.
    """
    dt = z_t.dtype
    if eps_hat is None:
        if alpha_t is None or sigma_t is None:
            raise ValueError("ddim_step: give eps_hat, or alpha_t and sigma_t to derive it")
        eps_hat = (z_t - _t(alpha_t, z_t).to(dt) * x_hat) / _t(sigma_t, z_t).to(dt)
    a_s, s_s = _t(alpha_s, z_t), _t(sigma_s, z_t)
    if eta == 0:
        return a_s.to(dt) * x_hat + s_s.to(dt) * eps_hat
    if alpha_t is None or sigma_t is None or noise is None:
        raise ValueError("ddim_step: eta > 0 needs alpha_t, sigma_t and noise")
    a_t, s_t = _t(alpha_t, z_t), _t(sigma_t, z_t)
    snr_ratio = (a_t * s_s) ** 2 / (s_t * a_s) ** 2
    var = (eta ** 2) * s_s ** 2 * (1.0 - snr_ratio)
    return _apply((s_s ** 2 - var).clamp_min(0).sqrt(), eps_hat, a_s, x_hat, var, noise)


def vp_ancestral_sampler(predict_x: Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, int]"],
                         z_init: torch.Tensor, logsnr_grid: torch.Tensor, rng: StackedRandom | None, *,
                         clip_x: bool = True, state_dtype: torch.dtype = torch.float64
                         ) -> tuple[torch.Tensor, int]:
    """DDPM ancestral sampling over an increasing logSNR grid λ_0 < λ_1 < … < λ_K.

    ``z_init`` is the starting latent at λ_0 (unit noise for a high-noise λ_0, as in SiD).
    Each step: ``x̂ = predict_x(z, λ_k)`` (z in z_init's dtype, λ a 0-dim tensor; may return (x̂, nfe)),
    clipped to [−1, 1] when ``clip_x``, then the posterior step to λ_{k+1} with fresh per-image noise
    from ``rng`` — except the last step, which returns the posterior mean. A final λ_K = +inf yields
    x̂ exactly. Returns (z at λ_K in z_init's dtype, nfe).
    """
    grid = torch.as_tensor(logsnr_grid, dtype=torch.float64).to(z_init.device)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ConfigError(f"logsnr_grid: expected a 1-D grid with at least 2 entries, got shape {tuple(grid.shape)}")
    if bool((grid[1:] <= grid[:-1]).any()) or not bool(torch.isfinite(grid[:-1]).all()):
        raise ConfigError("logsnr_grid: expected strictly increasing logSNR values (finite except the last)")
    dtype = z_init.dtype
    z = z_init.to(state_dtype)
    nfe = 0
    n_steps = grid.numel() - 1
    for k in range(n_steps):
        out = predict_x(z.to(dtype), grid[k].to(dtype))
        x_hat, n = out if isinstance(out, tuple) else (out, 1)
        nfe += int(n)
        x_hat = x_hat.to(state_dtype)
        if clip_x:
            x_hat = x_hat.clamp(-1.0, 1.0)
        last = k == n_steps - 1
        if not last and rng is None:
            raise ValueError("vp_ancestral_sampler: rng is required for the stochastic steps")
        noise = None if last else rng.randn_like(z_init).to(device=z.device, dtype=state_dtype)
        z = ddpm_ancestral_step(z, x_hat, grid[k], grid[k + 1], noise)
    return z.to(dtype), nfe
