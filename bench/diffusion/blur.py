"""Blurring diffusion of Relay Diffusion (Teng et al. 2023, RDM; CARDS.md §5): per-patch DCT blur,
block noise, the truncated-lognormal / blur schedules and the blur-aware Heun sampler.

Layout convention: an image (N, C, H, W) is cut into non-overlapping s×s patches; the orthonormal 2-D
DCT-II of each patch is stored in place, so coefficient (k, l) of patch (i, j) sits at pixel
(i·s + k, j·s + l). Blur factors are an (s, s) table (or one per example) tiled over the patches —
for any image size, which avoids the official code's hard-coded 64 repeats (CARDS §5 pitfall i).

The sampler keeps its state in float64 and calls the denoiser in float32, like the EDM sampler.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from bench.diffusion.edm import Denoiser, call_denoiser
from bench.method import ConfigError

Number = float | torch.Tensor


def _t64(x: Number) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x.to(torch.float64)


# ---- per-patch orthonormal DCT-II ----------------------------------------------------------------

def dct_matrix(s: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix ``M[k, n] = c_k cos(π(2n+1)k / 2s)``, c_0 = √(1/s), c_k = √(2/s)."""
    n = torch.arange(s, dtype=torch.float64)
    k = n[:, None]
    m = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * s)) * math.sqrt(2.0 / s)
    m[0] = m[0] / math.sqrt(2.0)
    return m.to(dtype=dtype, device=device)


def _patches(x: torch.Tensor, s: int) -> torch.Tensor:
    n, c, h, w = x.shape
    if h % s or w % s:
        raise ConfigError(f"up_scale: image size {h}×{w} is not divisible by the patch size {s}")
    return x.reshape(n, c, h // s, s, w // s, s)


def patch_dct(x: torch.Tensor, s: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of every s×s patch of ``x`` (N, C, H, W), coefficients in place."""
    m = dct_matrix(s, x.dtype, x.device)
    return torch.einsum("kp,ncipjq,lq->ncikjl", m, _patches(x, s), m).reshape(x.shape)


def patch_idct(coef: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of ``patch_dct`` (the transpose: the transform is orthonormal)."""
    m = dct_matrix(s, coef.dtype, coef.device)
    return torch.einsum("kp,ncikjl,lq->ncipjq", m, _patches(coef, s), m).reshape(coef.shape)


# ---- blur factors --------------------------------------------------------------------------------

def blur_factors(sigma_blur: Number, s: int, min_scale: float = 0.001) -> torch.Tensor:
    """``a_kl = (1−m)·exp(−π²(k²+l²)/s² · σ_B²/2) + m`` for k, l < s (heat-equation blur of one patch
    for time σ_B²/2, floored at m). σ_B a number → (s, s); a (N,) tensor → (N, s, s). float64."""
    sb = _t64(sigma_blur)
    f = (math.pi * torch.arange(s, dtype=torch.float64, device=sb.device) / s) ** 2
    freq2 = f[:, None] + f[None, :]
    heat = (sb ** 2 / 2).reshape(*sb.shape, 1, 1)
    return (1 - min_scale) * torch.exp(-freq2 * heat) + min_scale


def scale_coefficients(coef: torch.Tensor, factors: torch.Tensor, s: int) -> torch.Tensor:
    """Multiply per-patch DCT coefficients (N, C, H, W) by an (s, s) or (N, s, s) factor table."""
    n = coef.shape[0]
    a = factors.to(coef.dtype).reshape(-1, 1, 1, s, 1, s)
    if a.shape[0] not in (1, n):
        raise ValueError(f"blur factors for {a.shape[0]} examples, batch has {n}")
    return (_patches(coef, s) * a).reshape(coef.shape)


def dct_blur(x: torch.Tensor, s: int, sigma_blur: Number, min_scale: float = 0.001) -> torch.Tensor:
    """RDM's blur operator: DCT each s×s patch, scale coefficient (k, l) by a_kl(σ_B), inverse DCT.
    At large σ_B (and s = 2) every non-DC factor is ≈ m: the result is nearly the per-patch mean,
    i.e. nearest-upsampled average pooling."""
    a = blur_factors(sigma_blur, s, min_scale).to(x.device)
    return patch_idct(scale_coefficients(patch_dct(x, s), a, s), s)


# ---- block noise ---------------------------------------------------------------------------------

def block_noise(white: torch.Tensor, s: int) -> torch.Tensor:
    """``ε_blk = (1/s) Σ_{p,q<s} roll(ε', (p, q))`` over (H, W), circular: a sliding s×s box filter of
    the white field ε' — per-pixel variance 1, covariance (s−|a|)(s−|b|)/s² at offsets |a|, |b| < s."""
    out = torch.zeros_like(white)
    for p in range(s):
        for q in range(s):
            out = out + torch.roll(white, shifts=(p, q), dims=(-2, -1))
    return out / s


# ---- schedules -----------------------------------------------------------------------------------

def blur_sigma(u: Number, blur_sigma_max: float) -> torch.Tensor:
    """``σ_B(u) = B_max · sin²(πu/2)``."""
    return blur_sigma_max * torch.sin(_t64(u) * math.pi / 2) ** 2


def truncated_lognormal_sigma(u: Number, P_mean: float = -1.2, P_std: float = 1.2,
                              prob_length: float = 0.93) -> torch.Tensor:
    """``σ(u) = exp(P_mean + P_std Φ⁻¹(u·L))``: the EDM lognormal restricted to its lowest L quantiles
    (u ∈ (0, 1]; u = 1 gives σ_hi = 1.770 for L = .93, 1.312 for L = .89)."""
    return torch.exp(P_mean + P_std * torch.special.ndtri(_t64(u) * prob_length))


@functools.lru_cache(maxsize=None)   # called by every relay loss: computed once, no per-step host read
def train_u_floor(P_mean: float = -1.2, P_std: float = 1.2, prob_length: float = 0.93,
                  sigma_floor: float = 7.5e-3) -> float:
    """Lower clamp of the training u, as the official BlurLoss computes it: ``Φ((ln σ_f − P_mean)/P_std)·L``
    (the extra factor L makes the effective minimum σ ≈ 7.1e−3 for L = .93, not σ_f; reproduced as shipped)."""
    z = torch.tensor((math.log(sigma_floor) - P_mean) / P_std, dtype=torch.float64)
    return float(torch.special.ndtr(z)) * prob_length


def sampler_u(t: Number, P_mean: float = -1.2, P_std: float = 1.2, truncation_t: float = 0.93) -> torch.Tensor:
    """Blur time of the sampler at noise level t: ``u(t) = Φ((ln t − P_mean)/P_std) / L_s`` (the inverse of
    ``truncated_lognormal_sigma`` when L_s = L; CelebA-HQ ships L_s = 1.05 against training's 0.89)."""
    return torch.special.ndtr((torch.log(_t64(t)) - P_mean) / P_std) / truncation_t


# ---- sampling ------------------------------------------------------------------------------------

def truncated_karras_grid(n: int, sigma_min: float, sigma_max: float, rho: float, truncation_sigma: float
                          ) -> torch.Tensor:
    """The n-point Karras grid with every t ≥ ``truncation_sigma`` dropped, then t = 0 appended (float64)."""
    from bench.diffusion.edm import karras_sigmas

    if not sigma_min < truncation_sigma:
        raise ConfigError(f"truncation_sigma: expected > sigma_min ({sigma_min}), got {truncation_sigma}")
    t = karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False)
    t = t[t < truncation_sigma]
    if t.numel() == 0:
        raise ConfigError(f"steps: a {n}-point grid has no noise level below truncation_sigma={truncation_sigma}")
    return torch.cat([t, t.new_zeros(1)])


def noise_gamma(t_cur: Number, t_next: Number, s_noise: float) -> torch.Tensor:
    """``γ = √(1 − s_n²)·t_next/t_cur``: the fraction of the current noise kept, so that with fresh noise
    of std s_n·t_next the total is ``γ²t_cur² + s_n²t_next² = t_next²``."""
    return math.sqrt(1 - s_noise ** 2) * _t64(t_next) / _t64(t_cur)


def relay_update(x: torch.Tensor, d: torch.Tensor, t_cur: Number, t_next: Number, a_cur: torch.Tensor,
                 a_next: torch.Tensor, s: int, s_noise: float, fresh_noise: torch.Tensor) -> torch.Tensor:
    """One blur-diffusion step from t_cur to t_next with slope ``d`` (DCT space, ``(DCT x − DCT D)/t_cur``):
    ``x' = γ x + IDCT[(A_next − γ A_cur) ⊙ (DCT x − t_cur d)] + s_n t_next · fresh_noise``.
    With d from one denoiser output D this is ``γ x + IDCT[(A_next − γ A_cur) DCT D] + …``: keep γ of
    the current noise and blur residual, re-blur the prediction to the next level, add fresh noise."""
    g = noise_gamma(t_cur, t_next, s_noise).to(x.device)
    u = patch_dct(x, s)
    pred = u - _t64(t_cur).to(x.device) * d
    mix = a_next.to(x.device) - g * a_cur.to(x.device)
    return g * x + patch_idct(scale_coefficients(pred, mix, s), s) + s_noise * _t64(t_next).to(x.device) * fresh_noise


def blur_heun_sampler(denoise: Denoiser, x_up: torch.Tensor, grid: torch.Tensor,
                      factors: Callable[[torch.Tensor], torch.Tensor],
                      noise: Callable[[torch.Tensor], torch.Tensor], s: int, s_noise: float = 0.2,
                      net_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """RDM's stage-2 sampler over ``grid`` (t_0 > … > t_{K−1} > 0, then 0).

    ``x_up``: the upsampled low-resolution image (the fully blurred state); ``factors(t)``: the (s, s)
    blur factors at noise level t; ``noise(like)``: a fresh ``ε + s_blk·ε_blk`` draw. Start at
    ``x_0 = x_up + t_0·noise``; each step: D at t_i, Euler update, D' at t_{i+1}, redo the update from
    x_i with the averaged slope and newly drawn noise; the last step (to 0) returns D.
    NFE = 2K − 1 calls (times the per-call NFE a guided denoiser reports). Returns (x float64, nfe).
    """
    t = _t64(grid).to(x_up.device)
    k = t.numel() - 1
    x = x_up.to(torch.float64) + t[0] * noise(x_up.to(torch.float64))
    nfe = 0
    for i in range(k):
        t_cur, t_next = t[i], t[i + 1]
        denoised, n1 = call_denoiser(denoise, x, t_cur, net_dtype)
        nfe += n1
        if i == k - 1:
            return denoised, nfe
        a_cur, a_next = factors(t_cur), factors(t_next)
        u_cur = patch_dct(x, s)
        d_cur = (u_cur - patch_dct(denoised, s)) / t_cur
        x_next = relay_update(x, d_cur, t_cur, t_next, a_cur, a_next, s, s_noise, noise(x))
        denoised, n2 = call_denoiser(denoise, x_next, t_next, net_dtype)
        nfe += n2
        d_prime = (patch_dct(x_next, s) - patch_dct(denoised, s)) / t_next
        x = relay_update(x, (d_cur + d_prime) / 2, t_cur, t_next, a_cur, a_next, s, s_noise, noise(x))
    return x, nfe


__all__ = ["dct_matrix", "patch_dct", "patch_idct", "blur_factors", "scale_coefficients", "dct_blur",
           "block_noise", "blur_sigma", "truncated_lognormal_sigma", "train_u_floor", "sampler_u",
           "truncated_karras_grid", "noise_gamma", "relay_update", "blur_heun_sampler"]
