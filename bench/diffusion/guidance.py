"""Classifier-free guidance: the combination rule, a batched cond+uncond call, guidance intervals.

``cfg_combine(u, c, w) = u + w (c − u)``; w = 1 is the conditional prediction, w = 0 the
unconditional one. The same rule written ``w·c − (w−1)·u`` (RDM) is identical.
Guidance interval (Kynkäänniemi et al. 2024, used by SiD2): guide only while the noise level lies in
[lo, hi]; outside it only the conditional branch is evaluated (one NFE instead of two).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

Out = torch.Tensor | Sequence[torch.Tensor]
Args = Sequence[Any] | Mapping[str, Any]


def cfg_combine(uncond: Out, cond: Out, w: float | torch.Tensor) -> Out:
    """``uncond + w (cond − uncond)``, element-wise over a tensor or a list of tensors
    (e.g. a nested model's per-resolution outputs). ``w`` may be a number or a per-example (N,) tensor."""
    if isinstance(cond, torch.Tensor):
        wt = w
        if isinstance(w, torch.Tensor) and w.ndim == 1 and cond.ndim > 1:
            wt = w.to(cond.dtype).view(-1, *([1] * (cond.ndim - 1)))
        return uncond + wt * (cond - uncond)
    return type(cond)(cfg_combine(u, c, w) for u, c in zip(uncond, cond))


def in_interval(sigma: float | torch.Tensor, interval: tuple[float, float] | None) -> bool:
    """True when no interval is set or ``lo ≤ σ ≤ hi`` (σ a number or a 0-dim tensor)."""
    if interval is None:
        return True
    lo, hi = interval
    s = float(sigma)
    return lo <= s <= hi


def _batch_size(x: torch.Tensor | Sequence[torch.Tensor]) -> int:
    return (x if isinstance(x, torch.Tensor) else x[0]).shape[0]


def _cat(a: Any, b: Any, n: int, what: str) -> Any:
    """Stack one argument of the conditional and the unconditional call into one batch of 2N."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.ndim > 0 and a.shape[0] == n:
        if b.ndim == 0 or b.shape[0] != n:
            raise ValueError(f"guided: {what} has batch {n} in the conditional call but shape "
                             f"{tuple(b.shape)} in the unconditional one")
        return torch.cat([a, b])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(_cat(ai, bi, n, f"{what}[{i}]") for i, (ai, bi) in enumerate(zip(a, b)))
    if a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                  and torch.equal(a, b)) or (not isinstance(a, torch.Tensor) and a == b):
        return a  # shared argument (σ, a flag ...): passed once
    raise ValueError(f"guided: {what} differs between the conditional and unconditional calls and "
                     f"is not a per-example tensor of batch {n}")


def _split(out: Out) -> tuple[Out, Out]:
    if isinstance(out, torch.Tensor):
        return out.chunk(2)
    pairs = [o.chunk(2) for o in out]
    return type(out)(p[0] for p in pairs), type(out)(p[1] for p in pairs)


def _call(fn: Callable[..., Out], x: Any, args: Args) -> Out:
    if isinstance(args, Mapping):
        return fn(x, **args)
    return fn(x, *args)


def guided(fn: Callable[..., Out], x: torch.Tensor | Sequence[torch.Tensor], cond_args: Args,
           uncond_args: Args, w: float, *, sigma: float | torch.Tensor | None = None,
           interval: tuple[float, float] | None = None) -> tuple[Out, int]:
    """Classifier-free guided evaluation ``fn(x, *args)`` (or ``fn(x, **args)`` for mappings).

    When ``w != 1`` (and σ inside ``interval`` if one is given) the conditional and unconditional
    calls run as one batch of 2N (per-example tensor arguments are concatenated, equal ones shared)
    and the outputs are combined with ``cfg_combine``; returns (output, NFE multiplier 2).
    Otherwise only the conditional call runs; returns (output, 1).
    """
    if interval is not None and sigma is None:
        raise ValueError("guided: a guidance interval needs sigma")
    if w == 1 or not in_interval(sigma if sigma is not None else 0.0, interval):
        return _call(fn, x, cond_args), 1
    n = _batch_size(x)
    xx = torch.cat([x, x]) if isinstance(x, torch.Tensor) else type(x)(torch.cat([xi, xi]) for xi in x)
    if isinstance(cond_args, Mapping):
        if not isinstance(uncond_args, Mapping) or set(cond_args) != set(uncond_args):
            raise ValueError("guided: cond_args and uncond_args must name the same keyword arguments")
        args: Args = {k: _cat(cond_args[k], uncond_args[k], n, k) for k in cond_args}
    else:
        if isinstance(uncond_args, Mapping) or len(cond_args) != len(uncond_args):
            raise ValueError("guided: cond_args and uncond_args must have the same length")
        args = [_cat(a, b, n, f"argument {i}") for i, (a, b) in enumerate(zip(cond_args, uncond_args))]
    cond, uncond = _split(_call(fn, xx, args))
    return cfg_combine(uncond, cond, w), 2


def v_prediction_x_fn(v_model: Callable, cond, guidance: float) -> Callable:
    """``predict(z, λ) -> (x̂, nfe)`` for a v-prediction network ``v_model(z, λ_batch, labels, text)``:
    x̂ = α z − σ v̂ (float64), with classifier-free guidance on v̂ in one batched call (2 NFE) when ``cond``
    carries a condition and ``guidance`` != 1. ``cond`` is a bench.method.Condition (or None)."""
    from bench.diffusion.param import x_from_v
    from bench.diffusion.schedules import alpha_sigma_from_logsnr
    from bench.method import Condition

    cond = cond or Condition()
    unc = cond.null()
    w = 1.0 if cond.empty else guidance

    def predict(z: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, int]:
        lam_b = lam.reshape(1).expand(z.shape[0])
        v, nfe = guided(v_model, z, (lam_b, cond.labels, cond.text), (lam_b, unc.labels, unc.text), w)
        alpha, sigma = alpha_sigma_from_logsnr(lam.double())
        return x_from_v(z.double(), v.double(), alpha, sigma), nfe
    return predict
