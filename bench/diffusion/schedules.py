"""Noise schedules: VP <-> VE conversions, SiD cosine logSNR (shifted / interpolated), DDPM discrete
schedules (iDDPM cosine, ADM linear), MDM's gamma array with its resolution shift and resampled grid.

Conventions (CARDS.md §0): VP ``z_t = α_t x + σ_t ε`` with ``α² + σ² = 1`` and logSNR
``λ = log(α²/σ²)``, so ``α² = sigmoid(λ)``, ``σ² = sigmoid(−λ)``. VE/EDM ``x_σ = x + σ n`` with
``σ_VE = σ_t/α_t = exp(−λ/2) = sqrt(1/ᾱ − 1)``. DDPM's ``ᾱ_t`` (MDM's ``γ_t``) is ``α_t²``.

Every function computes in float64. Float tensors come back in their own dtype; Python numbers
come back as float64 tensors.
"""
from __future__ import annotations

import math

import torch

from bench.method import ConfigError

Number = float | int | torch.Tensor


def as_f64(x: Number) -> torch.Tensor:
    """``x`` as a float64 tensor (device kept)."""
    return torch.as_tensor(x).to(torch.float64)


def _like(out: torch.Tensor, ref: Number) -> torch.Tensor:
    """Cast a float64 result back to ``ref``'s dtype when ``ref`` is a floating tensor."""
    if isinstance(ref, torch.Tensor) and ref.dtype.is_floating_point:
        return out.to(ref.dtype)
    return out


# ---- VP <-> VE -------------------------------------------------------------------------------

def sigma_from_logsnr(logsnr: Number) -> torch.Tensor:
    """VE noise level of a VP logSNR: ``σ_VE = exp(−λ/2)``."""
    return _like(torch.exp(-0.5 * as_f64(logsnr)), logsnr)


def logsnr_from_sigma(sigma: Number) -> torch.Tensor:
    """logSNR of a VE noise level: ``λ = −2 ln σ_VE`` (σ = 0 gives +inf)."""
    return _like(-2.0 * torch.log(as_f64(sigma)), sigma)


def alpha_sigma_from_logsnr(logsnr: Number) -> tuple[torch.Tensor, torch.Tensor]:
    """VP ``(α, σ)`` of a logSNR: ``α = sqrt(sigmoid(λ))``, ``σ = sqrt(sigmoid(−λ))`` (λ may be ±inf)."""
    lam = as_f64(logsnr)
    return (_like(torch.sigmoid(lam).sqrt(), logsnr), _like(torch.sigmoid(-lam).sqrt(), logsnr))


def alpha_sigma_from_ve_sigma(sigma: Number) -> tuple[torch.Tensor, torch.Tensor]:
    """VP ``(α, σ_VP)`` equivalent to a VE level: ``α = 1/sqrt(1+σ²)``, ``σ_VP = σ/sqrt(1+σ²)``
    (so ``z = α·x_VE``)."""
    s = as_f64(sigma)
    a = torch.rsqrt(1.0 + s * s)
    return _like(a, sigma), _like(s * a, sigma)


def alpha_bar_to_sigma(alpha_bar: Number) -> torch.Tensor:
    """VE noise level of a DDPM ``ᾱ``: ``σ_VE = sqrt(1/ᾱ − 1)``."""
    ab = as_f64(alpha_bar)
    return _like(torch.sqrt((1.0 - ab) / ab), alpha_bar)


def logsnr_from_alpha_bar(alpha_bar: Number) -> torch.Tensor:
    """``λ = log(ᾱ/(1−ᾱ))`` (ᾱ = 1 gives +inf)."""
    ab = as_f64(alpha_bar)
    return _like(torch.log(ab) - torch.log1p(-ab), alpha_bar)


def alpha_bar_from_logsnr(logsnr: Number) -> torch.Tensor:
    """``ᾱ = sigmoid(λ)``."""
    return _like(torch.sigmoid(as_f64(logsnr)), logsnr)


# ---- SiD continuous cosine logSNR ---------------------------------------------------------------

def _check_unit_interval(t: torch.Tensor, name: str = "t", given: Number = None) -> None:
    # Numbers and lists from a user are checked; tensors come from our own samplers and trainers, in
    # [0, 1] by construction, and checking them would cost a device-to-host read in every training step.
    if isinstance(given, torch.Tensor):
        return
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
        raise ConfigError(f"{name}: expected values in [0, 1], got min {t.min().item():g} max {t.max().item():g}")


def logsnr_cosine(t: Number, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    """Clipped cosine schedule (SiD): ``λ(t) = −2 log tan(t_min + t (t_max − t_min))`` with
    ``t_min = atan(e^{−λ_max/2})``, ``t_max = atan(e^{−λ_min/2})``; λ(0) = λ_max, λ(1) = λ_min."""
    if not logsnr_min < logsnr_max:
        raise ConfigError(f"logsnr_min ({logsnr_min}) must be < logsnr_max ({logsnr_max})")
    tt = as_f64(t)
    _check_unit_interval(tt, given=t)
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return _like(-2.0 * torch.log(torch.tan(t_min + tt * (t_max - t_min))), t)


def resolution_shift(image_d: int, ref_d: int) -> float:
    """SiD logSNR shift for a ``image_d``² image relative to ``ref_d``²: ``2 log(ref_d/image_d)``
    (SNR divided by the pixel-count ratio)."""
    if image_d <= 0 or ref_d <= 0:
        raise ConfigError(f"resolutions must be positive, got image_d={image_d}, ref_d={ref_d}")
    return 2.0 * math.log(ref_d / image_d)


def logsnr_cosine_shifted(t: Number, image_d: int, ref_d: int = 64, logsnr_min: float = -15.0,
                          logsnr_max: float = 15.0) -> torch.Tensor:
    """``λ_shift(t) = λ_cos(t) + 2 log(ref_d/image_d)`` (128 → −1.386, 256 → −2.773, 512 → −4.159)."""
    return logsnr_cosine(t, logsnr_min, logsnr_max) + resolution_shift(image_d, ref_d)


def logsnr_cosine_interpolated(t: Number, image_d: int, ref_low: int = 32, ref_high: int = 256,
                               logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    """``λ(t) = t·λ_shift(ref_low)(t) + (1−t)·λ_shift(ref_high)(t)``: the strong shift of the low
    reference resolution at high noise (t→1), the weak shift of the high reference at low noise."""
    if ref_low > ref_high:
        raise ConfigError(f"ref_low ({ref_low}) must be <= ref_high ({ref_high})")
    lo = logsnr_cosine_shifted(t, image_d, ref_low, logsnr_min, logsnr_max)
    hi = logsnr_cosine_shifted(t, image_d, ref_high, logsnr_min, logsnr_max)
    tt = torch.as_tensor(t, dtype=lo.dtype, device=lo.device)
    return tt * lo + (1.0 - tt) * hi


def t_from_logsnr_cosine(logsnr: Number, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    """Inverse of :func:`logsnr_cosine` (unshifted): ``t = (atan(e^{−λ/2}) − t_min)/(t_max − t_min)``."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return _like((torch.atan(torch.exp(-0.5 * as_f64(logsnr))) - t_min) / (t_max - t_min), logsnr)


# ---- DDPM discrete ------------------------------------------------------------------------------

def _check_T(T: int) -> None:
    if int(T) != T or T < 1:
        raise ConfigError(f"T (number of diffusion steps): expected a positive integer, got {T!r}")


def ddpm_cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM cosine betas (``betas_for_alpha_bar``): ``f(u) = cos²((u+s)/(1+s)·π/2)``,
    ``β_t = min(1 − f((t+1)/T)/f(t/T), max_beta)``, t = 0..T−1."""
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)


def ddpm_cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """``ᾱ_t = Π_{i≤t}(1 − β_i)`` of the iDDPM cosine betas, length T (t = 0..T−1)."""
    return torch.cumprod(1.0 - ddpm_cosine_betas(T, s, max_beta), 0)


def ddpm_linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ADM linear betas: linspace(beta_start·1000/T, beta_end·1000/T, T) (the DDPM schedule for T=1000)."""
    _check_T(T)
    scale = 1000.0 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)


def ddpm_linear_alpha_bar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``ᾱ_t = Π_{i≤t}(1 − β_i)`` of the linear betas, length T."""
    return torch.cumprod(1.0 - ddpm_linear_betas(T, beta_start, beta_end), 0)


# ---- MDM ---------------------------------------------------------------------------------------

def mdm_gammas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """MDM's gamma array: ``γ_0 = 1`` prepended to the iDDPM cosine ᾱ, length T+1.
    Training at index t ∈ {0..T−1} uses ``γ[t+1]``; sampling at grid value t uses ``γ[t]``."""
    return torch.cat([torch.ones(1, dtype=torch.float64), ddpm_cosine_alpha_bar(T, s, max_beta)])


def shift_gamma(gamma: Number, ratio: float, power: float = 1.0) -> torch.Tensor:
    """MDM resolution shift: ``SNR' = SNR/ratio^power``, ``γ' = 1/(1 + 1/SNR')``, written as
    ``γ/(γ + k(1−γ))`` with ``k = ratio^power`` so γ = 1 stays exactly 1."""
    if ratio <= 0:
        raise ConfigError(f"shift ratio: expected > 0, got {ratio}")
    g = as_f64(gamma)
    k = float(ratio) ** float(power)
    return _like(g / (g + k * (1.0 - g)), gamma)


def resampled_timesteps(T: int, n: int) -> torch.Tensor:
    """MDM's respaced sampling grid: ``ratio = (T+1)/(n+1)``, ``t_k = round(k·ratio)`` for k = 0..n,
    reversed (descending, ends at 0; int64, length n+1). Round half to even, as numpy does."""
    _check_T(T)
    if int(n) != n or not 1 <= n <= T:
        raise ConfigError(f"sampling steps: expected an integer in [1, {T}], got {n!r}")
    ratio = (T + 1) / (n + 1)
    k = torch.arange(n + 1, dtype=torch.float64)
    return torch.round(k * ratio).to(torch.int64).flip(0)
