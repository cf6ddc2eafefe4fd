"""Consistency-model math (Song et al. 2023; iCT, Song & Dhariwal 2024). CARDS.md §7.1, §7.2, §10.1.

Grid convention: ``karras_grid(N)`` is descending, index 0 = σ_max, index N−1 = σ_min (the official
code's and the sampler's ``ts`` convention). iCT formulas are written on the ascending grid
(``grid.flip(0)``); the functions below say which one they take.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from bench.diffusion.edm import karras_sigmas
from bench.diffusion.rng import StackedRandom
from bench.method import ConfigError

TIME_SCALE = 250.0            # CM time input: 250·ln(σ + 1e-44) (= 1000 · EDM's ¼ ln σ)
PSEUDO_HUBER_SCALE = 0.00054  # iCT: c = 0.00054·√D


# ---- parameterisation ----------------------------------------------------------------------------

def cm_time_input(sigma: torch.Tensor) -> torch.Tensor:
    """The network's noise label ``250·ln(σ + 1e-44)`` (the 1e-44 keeps σ = 0 finite)."""
    return TIME_SCALE * torch.log(sigma + 1e-44)


def boundary_scalings(sigma: torch.Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` with ``c_skip = σ_d²/((σ−σ_min)² + σ_d²)``,
    ``c_out = (σ−σ_min)σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``: c_skip(σ_min) = 1, c_out(σ_min) = 0,
    so ``f(x, σ_min) = x`` exactly whatever the network outputs."""
    sd2 = sigma_data * sigma_data
    shifted = sigma - sigma_min
    c_skip = sd2 / (shifted * shifted + sd2)
    r = torch.rsqrt(sigma * sigma + sd2)
    return c_skip, shifted * sigma_data * r, r


def boundary_denoise(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     sigma: torch.Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5) -> torch.Tensor:
    """``f(x, σ) = c_skip x + c_out F(c_in x, 250 ln σ)``; ``net(x_in, noise_label)`` is F, σ per example
    (shape (N,)) or a scalar."""
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))
    c_skip, c_out, c_in = boundary_scalings(s, sigma_min, sigma_data)
    out = net(c_in * x, cm_time_input(s).reshape(-1))
    return c_skip * x + c_out * out.to(x.dtype)


# ---- discretisation and curricula ----------------------------------------------------------------

def karras_grid(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The N-level CM grid, descending (index 0 = σ_max, N−1 = σ_min), float64."""
    if n < 2:
        raise ConfigError(f"number of discretisation levels: expected >= 2, got {n}")
    return karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False)


def ct_curriculum(fraction: float, s0: int, s1: int, mu0: float, mu_variant: str = "code") -> tuple[int, float]:
    """CT's √-curriculum ``(N(k), μ(k))`` at ``fraction = k/K``.

    ``N(k) = ⌈√(k/K·((s1+1)² − s0²) + s0²) − 1⌉ + 1`` (at least 2). ``μ(k) = exp(s0 ln μ0 / (N(k)−1))`` as
    the official code computes it (``mu_variant="code"``); the paper divides by N(k) (``"paper"``).
    """
    if mu_variant not in ("code", "paper"):
        raise ConfigError(f"mu_variant: expected 'code' or 'paper', got {mu_variant!r}")
    f = min(max(float(fraction), 0.0), 1.0)
    inner = max(math.ceil(math.sqrt(f * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1), 1)
    n = inner + 1
    mu = math.exp(s0 * math.log(mu0) / (inner if mu_variant == "code" else n))
    return n, mu


def ict_num_scales(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's doubling curriculum ``N(k) = min(s0·2^⌊k/K'⌋, s1) + 1``, ``K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋``."""
    if s0 < 1 or s1 < s0:
        raise ConfigError(f"iCT curriculum: expected 1 <= s0 <= s1, got s0={s0}, s1={s1}")
    k_prime = max(math.floor(K / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (int(k) // k_prime), s1) + 1


def lognormal_index_probs(sigmas_ascending: torch.Tensor, P_mean: float = -1.1, P_std: float = 2.0) -> torch.Tensor:
    """iCT's discretised lognormal over the N−1 intervals of an ascending grid:
    ``p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std))``."""
    s = torch.as_tensor(sigmas_ascending, dtype=torch.float64)
    cdf = torch.erf((torch.log(s) - P_mean) / (math.sqrt(2.0) * P_std))
    w = cdf[1:] - cdf[:-1]
    return w / w.sum()


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw of one index per uniform ``u`` in [0, 1) (per-example uniforms keep draws
    independent of the batch composition)."""
    cdf = torch.cumsum(probs.to(torch.float64), 0)
    idx = torch.searchsorted(cdf.to(u.device), u.to(torch.float64), right=True)
    return idx.clamp_(max=probs.numel() - 1)


def ict_weights(sigma_lo: torch.Tensor, sigma_hi: torch.Tensor) -> torch.Tensor:
    """iCT loss weight ``λ(σ_i) = 1/(σ_{i+1} − σ_i)``."""
    return 1.0 / (sigma_hi - sigma_lo)


# ---- metrics ---------------------------------------------------------------------------------------

METRICS = ("l2", "l1", "pseudo_huber")


def pseudo_huber_c(numel_per_example: int) -> float:
    """``c = 0.00054·√D`` with D = C·H·W (0.02993 at 3×32², 0.05986 at 3×64², 0.2394 at 3×256²)."""
    return PSEUDO_HUBER_SCALE * math.sqrt(numel_per_example)


def consistency_distance(a: torch.Tensor, b: torch.Tensor, metric: str, c: float | None = None) -> torch.Tensor:
    """Per-example distance d(a, b): ``l2`` mean squared error, ``l1`` mean absolute error (the official
    code's ``mean_flat``), ``pseudo_huber`` ``√(‖a−b‖² + c²) − c`` over the whole image vector (iCT)."""
    diff = (a - b).flatten(1)
    if metric == "l2":
        return diff.pow(2).mean(1)
    if metric == "l1":
        return diff.abs().mean(1)
    if metric == "pseudo_huber":
        c = pseudo_huber_c(diff.shape[1]) if c is None else c
        return torch.sqrt(diff.pow(2).sum(1) + c * c) - c
    raise ConfigError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")


# ---- teacher ODE step (CD) -------------------------------------------------------------------------

def teacher_ode_step(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     t: torch.Tensor, t2: torch.Tensor, solver: str = "heun") -> torch.Tensor:
    """One PF-ODE step of the teacher from t to t2 < t (per-example σ of shape (N,)):
    Euler ``x' = x + (t2−t)(x − D(x;t))/t``; Heun averages with ``(x' − D(x';t2))/t2``."""
    if solver not in ("heun", "euler"):
        raise ConfigError(f"teacher_solver: expected 'heun' or 'euler', got {solver!r}")
    tb, t2b = (s.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) for s in (t, t2))
    d = (x - denoise(x, t)) / tb
    x_next = x + (t2b - tb) * d
    if solver == "euler":
        return x_next
    d2 = (x_next - denoise(x_next, t2)) / t2b
    return x + (t2b - tb) * (d + d2) / 2


# ---- sampling --------------------------------------------------------------------------------------

def parse_index_list(text: str | Sequence[int]) -> list[int]:
    """``"0,22,39"`` or ``[0, 22, 39]`` -> ``[0, 22, 39]``."""
    if isinstance(text, str):
        try:
            return [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"sampling_ts: expected comma-separated integers like '0,22,39', got {text!r}") from None
    return [int(p) for p in text]


def check_index_list(ts: Sequence[int], n: int) -> list[int]:
    ts = list(ts)
    if len(ts) < 2 or ts[0] < 0 or ts[-1] != n - 1 or any(b <= a for a, b in zip(ts, ts[1:])):
        raise ConfigError(f"sampling_ts: expected strictly increasing grid indices from >= 0 ending at N-1 = {n - 1} "
                          f"(e.g. 0,{n // 2},{n - 1}), got {ts}")
    return ts


def spaced_indices(n: int, steps: int) -> list[int]:
    """``steps`` evenly spaced indices on an N-level grid plus the final σ_min index (diffusers'
    ``set_timesteps(steps)``: ratio ``N // steps``): N=40, 2 steps -> [0, 20, 39]."""
    if not 1 <= steps <= n - 1:
        raise ConfigError(f"steps: expected 1..{n - 1} on an N={n} grid, got {steps}")
    ratio = n // steps
    return [i * ratio for i in range(steps)] + [n - 1]


def multistep_sample(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                     sigmas: Sequence[float] | torch.Tensor, rng: StackedRandom | None, sigma_min: float = 0.002,
                     sigma_max: float = 80.0, clip: bool = True) -> tuple[torch.Tensor, int]:
    """CM multistep sampling (the official ``stochastic_iterative_sampler``): ``x = σ_max z``; for each σ
    of the list but the last: ``x0 = f(x, σ_i)`` (clipped to [−1, 1]); ``x = x0 + √(σ_{i+1}² − σ_min²) z'``
    with σ_{i+1} clamped to [σ_min, σ_max]. The last σ is usually σ_min, so the result is the last x0.
    Returns (x, NFE = len(sigmas) − 1)."""
    sig = [float(s) for s in sigmas]
    x = noise * sigma_max
    nfe = 0
    for i in range(len(sig) - 1):
        x0 = f(x, torch.full((x.shape[0],), sig[i], dtype=x.dtype, device=x.device))
        nfe += 1
        if clip:
            x0 = x0.clamp(-1, 1)
        nxt = min(max(sig[i + 1], sigma_min), sigma_max)
        # the grid's last level is σ_min up to float rounding: no re-noising there
        scale = 0.0 if nxt <= sigma_min * (1 + 1e-9) else math.sqrt(nxt * nxt - sigma_min * sigma_min)
        if scale > 0:
            if rng is None:
                raise ValueError("multistep_sample: re-noising needs rng")
            x = x0 + scale * rng.randn(x0.shape, dtype=x0.dtype).to(x0.device)
        else:
            x = x0
    return x, nfe


# ---- dropout replay (student and target passes see the same dropout masks) -------------------------

def rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def rng_restore(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
