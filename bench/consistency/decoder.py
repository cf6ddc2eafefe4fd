"""Consistency-decoder math (OpenAI consistencydecoder; diffusers ConsistencyDecoderScheduler/VAE).
CARDS.md §7.3, §10.2.

VP process on pixels, iDDPM cosine ᾱ with T = 1024: ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε``. The network is
preconditioned with EDM scalings written in VP coordinates (σ = √(1/ᾱ − 1), σ_d = 0.5):
``c_in = 1/√(1−0.75ᾱ)``, ``c_skip = 0.25√ᾱ/(1−0.75ᾱ)``, ``c_out = 0.5√(1−ᾱ)/√(1−0.75ᾱ)``, and
``x̂0 = c_skip x_t + c_out F(concat(c_in x_t, up8(z')), t)``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from bench.diffusion.rng import StackedRandom
from bench.diffusion.schedules import ddpm_cosine_alpha_bar
from bench.method import ConfigError

T_TRAIN = 1024
DISTILLED_STEPS = 64
SD_SCALING_FACTOR = 0.18215
SD_LATENT_MEANS = (0.38862467, 0.02253063, 0.07381133, -0.0171294)
SD_LATENT_STDS = (0.9654121, 1.0440036, 0.76147926, 0.77022034)


def decoder_alpha_bar(T: int = T_TRAIN) -> torch.Tensor:
    """ᾱ_t, t = 0..T−1, of the iDDPM cosine schedule (β ≤ 0.999), float64."""
    return ddpm_cosine_alpha_bar(T)


def decoder_scalings(alpha_bar: torch.Tensor, sigma_data: float = 0.5
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` of EDM's preconditioning at σ = √(1/ᾱ − 1), expressed on the VP input
    x_t = √ᾱ·x_VE: ``c_skip = √(1/ᾱ)σ_d²/(σ²+σ_d²)``, ``c_out = σσ_d/√(σ²+σ_d²)``, ``c_in = √(1/ᾱ)/√(σ²+σ_d²)``."""
    ab = alpha_bar.to(torch.float64)
    sigma2 = 1.0 / ab - 1.0
    sd2 = sigma_data * sigma_data
    inv_sqrt_ab = torch.rsqrt(ab)
    c_skip = inv_sqrt_ab * sd2 / (sigma2 + sd2)
    c_out = torch.sqrt(sigma2) * sigma_data * torch.rsqrt(sigma2 + sd2)
    c_in = inv_sqrt_ab * torch.rsqrt(sigma2 + sd2)
    return c_skip, c_out, c_in


def normalise_latent(z: torch.Tensor, means: Sequence[float] = SD_LATENT_MEANS, stds: Sequence[float] = SD_LATENT_STDS,
                     scaling_factor: float = SD_SCALING_FACTOR) -> torch.Tensor:
    """``z' = (scaling_factor·z − μ_c)/s_c`` per channel; z is the unscaled VAE latent."""
    if z.shape[1] != len(means):
        raise ConfigError(f"latent has {z.shape[1]} channels, the normalisation expects {len(means)}")
    m = torch.tensor(means, dtype=z.dtype, device=z.device).reshape(1, -1, 1, 1)
    s = torch.tensor(stds, dtype=z.dtype, device=z.device).reshape(1, -1, 1, 1)
    return (scaling_factor * z - m) / s


def upsample_latent(z: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Nearest-neighbour ×factor up-sampling of the latent to pixel resolution."""
    return F.interpolate(z, scale_factor=factor, mode="nearest")


def round_timesteps(t: torch.Tensor, total: int = T_TRAIN, n_distilled: int = DISTILLED_STEPS) -> torch.Tensor:
    """Snap integer timesteps onto the distilled grid: ``(⌊t/space⌋ + 1)·space`` with space = total //
    n_distilled, and ``total`` itself moved down one space (1023 -> 1008, 511 -> 512)."""
    space = total // n_distilled
    r = (torch.div(t, space, rounding_mode="floor") + 1) * space
    return torch.where(r >= total, r - space, r)


def sampling_timesteps(steps: int, total: int = T_TRAIN, n_distilled: int = DISTILLED_STEPS) -> list[int]:
    """The decoder's schedule ``s_i = 1 − i/steps`` (2 steps: [1.0, 0.5]) mapped to ``⌊s·(T−1)⌋`` and
    rounded onto the distilled grid: 2 steps -> [1008, 512]."""
    if not 1 <= steps <= n_distilled - 1:
        raise ConfigError(f"steps: expected 1..{n_distilled - 1} for the consistency decoder, got {steps}")
    sched = torch.tensor([1.0 - i / steps for i in range(steps)], dtype=torch.float64)
    t = (sched * (total - 1)).long()
    out = [int(v) for v in round_timesteps(t, total, n_distilled)]
    if any(b >= a for a, b in zip(out, out[1:])):
        raise ConfigError(f"steps={steps} gives repeated timesteps {out} on the {n_distilled}-step grid")
    return out


def distilled_grid(total: int = T_TRAIN, n_distilled: int = DISTILLED_STEPS) -> torch.Tensor:
    """The consistency-distillation grid ``{0, space, 2·space, …, total − space}`` (64 points for 1024)."""
    space = total // n_distilled
    return torch.arange(0, total, space, dtype=torch.long)


# ---- teacher ODE step in VP coordinates ------------------------------------------------------------

def vp_teacher_step(predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor,
                    t: torch.Tensor, t_next: torch.Tensor, alpha_bar: torch.Tensor, solver: str = "heun") -> torch.Tensor:
    """One PF-ODE step of a VP x0-predictor from t to t_next < t, taken as an EDM step on
    ``x_VE = x_t/√ᾱ`` between σ = √(1/ᾱ − 1) levels and mapped back (``x = √ᾱ·x_VE``)."""
    if solver not in ("heun", "euler"):
        raise ConfigError(f"teacher_solver: expected 'heun' or 'euler', got {solver!r}")
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    ab_a = alpha_bar.to(x_t.device)[t].to(x_t.dtype).reshape(shape)
    ab_b = alpha_bar.to(x_t.device)[t_next].to(x_t.dtype).reshape(shape)
    sa, sb = torch.sqrt(1 / ab_a - 1), torch.sqrt(1 / ab_b - 1)
    x_ve = x_t / ab_a.sqrt()
    d = (x_ve - predict_x0(x_t, t)) / sa
    x_ve_next = x_ve + (sb - sa) * d
    if solver == "heun":
        d2 = (x_ve_next - predict_x0(x_ve_next * ab_b.sqrt(), t_next)) / sb
        x_ve_next = x_ve + (sb - sa) * (d + d2) / 2
    return x_ve_next * ab_b.sqrt()


# ---- sampler ---------------------------------------------------------------------------------------

def decoder_sample(predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: Sequence[int],
                   timesteps: Sequence[int], alpha_bar: torch.Tensor, rng: StackedRandom, clamp: bool = True,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """The consistency decoder's loop: ``x_prev = 0``; for each t: ``x_t = √ᾱ_t x_prev + √(1−ᾱ_t) ε``,
    ``x_prev = x̂0(x_t, t)`` (clamped to [−1, 1] when ``clamp``, as the original package; diffusers does not).
    Returns (x̂0 of the last step, NFE)."""
    x_prev = torch.zeros(tuple(shape), device=device)
    for t in timesteps:
        ab = float(alpha_bar[t])
        eps = rng.randn(tuple(shape)).to(device)
        x_t = math.sqrt(ab) * x_prev + math.sqrt(1.0 - ab) * eps
        x_prev = predict_x0(x_t, torch.full((shape[0],), int(t), dtype=torch.long, device=device))
        if clamp:
            x_prev = x_prev.clamp(-1, 1)
    return x_prev, len(timesteps)
