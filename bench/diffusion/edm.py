"""EDM (Karras et al. 2022): preconditioning, loss weight, lognormal noise levels, the Karras
σ grid and the Alg. 2 sampler (Euler / Heun with optional churn). CARDS.md §1.

The sampler keeps its state in float64 and calls the denoiser in float32, as EDM's generate.py does.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from bench.diffusion.rng import StackedRandom
from bench.method import ConfigError

Number = float | int | torch.Tensor
# denoise(x float32 (N, ...), sigma 0-dim float32 tensor) -> D(x; σ), or (D, nfe) when it spends
# more than one network evaluation (e.g. classifier-free guidance, see bench.diffusion.guidance).
Denoiser = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, int]"]


def _f(x: Number) -> torch.Tensor:
    """A float tensor: float tensors keep their dtype, anything else becomes float64."""
    if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
        return x
    return torch.as_tensor(x, dtype=torch.float64)


# ---- training-side math ------------------------------------------------------------------------

def edm_precond(sigma: Number, sigma_data: float = 0.5
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` with ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σσ_d/√(σ²+σ_d²)``,
    ``c_in = 1/√(σ²+σ_d²)``, ``c_noise = ¼ ln σ``; ``D(x;σ) = c_skip x + c_out F(c_in x; c_noise)``."""
    s = _f(sigma)
    sd2 = sigma_data * sigma_data
    r = torch.rsqrt(s * s + sd2)
    return sd2 * r * r, s * sigma_data * r, r, torch.log(s) / 4


def edm_loss_weight(sigma: Number, sigma_data: float = 0.5) -> torch.Tensor:
    """``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` — makes the effective target of F unit-variance."""
    s = _f(sigma)
    return (s * s + sigma_data ** 2) / (s * sigma_data) ** 2


def lognormal_sigma(normal: torch.Tensor | StackedRandom, P_mean: float = -1.2, P_std: float = 1.2
                    ) -> torch.Tensor:
    """Training noise levels ``σ = exp(P_mean + P_std·n)``, n standard normal. Pass the normals
    (drawn from the batch's per-example streams) or a StackedRandom to draw one per example."""
    if isinstance(normal, StackedRandom):
        normal = normal.randn((len(normal),))
    return torch.exp(P_mean + P_std * normal)


def lognormal_sigma_quantile(q: Number, P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
    """The q-quantile of the lognormal σ: ``exp(P_mean + P_std·Φ⁻¹(q))`` (5% 0.0418, 50% 0.301, 95% 2.168)."""
    return torch.exp(P_mean + P_std * torch.special.ndtri(_f(q)))


# ---- sampling grid -----------------------------------------------------------------------------

def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``t_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, i = 0..n−1, then ``t_n = 0`` when
    ``append_zero``. n = 1 gives just σ_max."""
    if int(n) != n or n < 1:
        raise ConfigError(f"steps: expected a positive integer, got {n!r}")
    if not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"sigma_min/sigma_max: expected 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise ConfigError(f"rho: expected > 0, got {rho}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else i
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (hi + frac * (lo - hi)) ** rho
    if append_zero:
        t = torch.cat([t, t.new_zeros(1)])
    return t.to(dtype=dtype, device=device)


def churn_gamma(t: float, n_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """EDM's per-step churn ``γ_i = min(S_churn/N, √2 − 1)`` when ``S_min ≤ t_i ≤ S_max``, else 0."""
    if S_churn <= 0 or not S_min <= t <= S_max:
        return 0.0
    return min(S_churn / n_steps, math.sqrt(2.0) - 1.0)


# ---- one step ----------------------------------------------------------------------------------

def call_denoiser(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """Evaluate ``denoise`` at x (cast to ``dtype``) and a 0-dim σ; returns (D in x's dtype, nfe)."""
    out = denoise(x.to(dtype), sigma.to(dtype=dtype, device=x.device).reshape(()))
    d, nfe = out if isinstance(out, tuple) else (out, 1)
    return d.to(x.dtype), int(nfe)


def edm_step(denoise: Denoiser, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor, *,
             gamma: float = 0.0, rng: StackedRandom | None = None, S_noise: float = 1.0,
             solver: str = "heun", net_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """One step of EDM Alg. 2 from ``t_cur`` to ``t_next``; returns (x_next, nfe).

    Churn: ``t̂ = t_cur(1+γ)``, ``x̂ = x + √(t̂² − t_cur²)·S_noise·ε`` (ε from ``rng``, drawn in x's dtype).
    Euler: ``x' = x̂ + (t_next − t̂)·d``, ``d = (x̂ − D(x̂; t̂))/t̂``. Heun (unless t_next = 0): average
    d with ``d' = (x' − D(x'; t_next))/t_next``.
    """
    if solver not in ("heun", "euler"):
        raise ConfigError(f"solver: expected 'heun' or 'euler', got {solver!r}")
    t_cur, t_next = torch.as_tensor(t_cur, dtype=x.dtype), torch.as_tensor(t_next, dtype=x.dtype)
    t_hat = t_cur + gamma * t_cur
    x_hat = x
    if gamma > 0:
        if rng is None:
            raise ValueError("edm_step: churn (gamma > 0) needs rng")
        x_hat = x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * rng.randn_like(x).to(x.device)
    denoised, nfe = call_denoiser(denoise, x_hat, t_hat, net_dtype)
    d_cur = (x_hat - denoised) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if solver == "heun" and float(t_next) > 0:
        denoised, n2 = call_denoiser(denoise, x_next, t_next, net_dtype)
        nfe += n2
        d_prime = (x_next - denoised) / t_next
        x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next, nfe


# ---- the sampler -------------------------------------------------------------------------------

def edm_sampler(denoise: Denoiser, x_init_noise: torch.Tensor, sigmas: torch.Tensor, *,
                rng: StackedRandom | None = None, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, solver: str = "heun",
                net_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """EDM Alg. 2 over the grid ``sigmas`` (t_0 > … > t_N, usually ``karras_sigmas`` ending in 0).

    ``x_init_noise`` is unit Gaussian noise (draw it from ``rng``); it is scaled by ``sigmas[0]``
    here. N = len(sigmas) − 1 steps; NFE = 2N − 1 for Heun on a grid ending at 0, N for Euler
    (times the per-call NFE a guided denoiser reports). Returns (x in x_init_noise's dtype, nfe).
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).to(x_init_noise.device)
    if sig.ndim != 1 or sig.numel() < 2:
        raise ConfigError(f"sigmas: expected a 1-D grid with at least 2 entries, got shape {tuple(sig.shape)}")
    if bool((sig < 0).any()) or bool((sig[1:] > sig[:-1]).any()):
        raise ConfigError("sigmas: expected a non-negative, non-increasing grid")
    if bool((sig[:-1] <= 0).any()):
        raise ConfigError("sigmas: only the last entry may be 0")
    n_steps = sig.numel() - 1
    x = x_init_noise.to(torch.float64) * sig[0]
    nfe = 0
    for i in range(n_steps):
        t_cur, t_next = sig[i], sig[i + 1]
        gamma = churn_gamma(float(t_cur), n_steps, S_churn, S_min, S_max)
        x, n = edm_step(denoise, x, t_cur, t_next, gamma=gamma, rng=rng, S_noise=S_noise,
                        solver=solver, net_dtype=net_dtype)
        nfe += n
    return x.to(x_init_noise.dtype), nfe
