"""Parameterization conversions for VP diffusion ``z = α x + σ ε`` (CARDS.md §0).

``v = α ε − σ x`` (so ``x = α z − σ v`` and ``ε = σ z + α v`` when α² + σ² = 1).
Coefficients α, σ may be Python numbers, 0-dim tensors, per-example tensors of shape (N,) (broadcast
over the remaining dims of the batch), or tensors already broadcastable to the data.

Loss equivalences (SNR = α²/σ² = e^λ): with ε̂, v̂ derived from the same x̂ at the same z,
``‖ε̂ − ε‖² = SNR·‖x̂ − x‖²`` and ``‖v̂ − v‖² = (1 + SNR)·‖x̂ − x‖²`` (since ``v̂ − v = −(x̂ − x)/σ``).
"""
from __future__ import annotations

import torch

Coef = float | int | torch.Tensor


def batch_coef(c: Coef, like: torch.Tensor) -> Coef:
    """Shape a coefficient to broadcast against ``like`` (N, ...): (N,) becomes (N, 1, ..., 1)."""
    if not isinstance(c, torch.Tensor) or c.ndim == 0 or c.ndim == like.ndim:
        return c
    if c.ndim == 1 and like.ndim > 1 and c.shape[0] == like.shape[0]:
        return c.view(-1, *([1] * (like.ndim - 1)))
    raise ValueError(f"coefficient of shape {tuple(c.shape)} does not broadcast to data {tuple(like.shape)}; "
                     "expected a scalar, (N,) or a tensor of the data's rank")


def x_from_eps(z: torch.Tensor, eps: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """``x̂ = (z − σ ε̂)/α``."""
    return (z - batch_coef(sigma, z) * eps) / batch_coef(alpha, z)


def eps_from_x(z: torch.Tensor, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """``ε̂ = (z − α x̂)/σ``."""
    return (z - batch_coef(alpha, z) * x) / batch_coef(sigma, z)


def x_from_v(z: torch.Tensor, v: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """``x̂ = α z − σ v̂`` (VP only: uses α² + σ² = 1)."""
    return batch_coef(alpha, z) * z - batch_coef(sigma, z) * v


def eps_from_v(z: torch.Tensor, v: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """``ε̂ = σ z + α v̂`` (VP only)."""
    return batch_coef(sigma, z) * z + batch_coef(alpha, z) * v


def v_from_x_eps(x: torch.Tensor, eps: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """``v = α ε − σ x`` (the v-prediction target)."""
    return batch_coef(alpha, x) * eps - batch_coef(sigma, x) * x


def v_from_x(z: torch.Tensor, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """v implied by x̂ at z: ``v̂ = (α z − x̂)/σ`` (VP only)."""
    return (batch_coef(alpha, z) * z - x) / batch_coef(sigma, z)


def diffuse(x: torch.Tensor, eps: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """Forward process ``z = α x + σ ε``."""
    return batch_coef(alpha, x) * x + batch_coef(sigma, x) * eps


def eps_mse_per_x_mse(logsnr: torch.Tensor | float) -> torch.Tensor:
    """Factor turning an x-space squared error into the ε-space one: SNR = e^λ."""
    return torch.exp(torch.as_tensor(logsnr))


def v_mse_per_x_mse(logsnr: torch.Tensor | float) -> torch.Tensor:
    """Factor turning an x-space squared error into the v-space one: 1 + SNR."""
    return 1.0 + torch.exp(torch.as_tensor(logsnr))
