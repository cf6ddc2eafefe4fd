"""Small shared helpers for the tests (tiny run configs, weight comparison)."""
from __future__ import annotations

import math
from typing import Any

import torch

from bench.config import RunConfig, load_run_config
from bench.method import build_method


def tiny_preset(cls) -> str:
    return "cpu-tiny" if "cpu-tiny" in cls.presets else next(p for p in cls.presets if p.startswith("cpu"))


def tiny_run_config(method: str, preset: str, images: int = 8, batch: int = 4, overrides: dict | None = None,
                    **train: Any) -> RunConfig:
    m = build_method(method, preset, overrides)
    res = max(r for s in m.stages() for r in s.resolutions)
    cond = m.config.conditioning
    data: dict[str, Any] = {"kind": "synthetic", "resolution": res,
                            "options": {"n": 64, "num_classes": m.config.num_classes or 0}}
    if cond == "text":
        data["options"]["text_dim"] = m.config.text_dim
    t = dict(images=images, batch=batch, checkpoint_images=10 ** 9, log_images=batch, warmup_images=0,
             progress=False, device="cpu")
    t.update(train)
    return load_run_config(data={"method": method, "preset": preset, "method_config": overrides or {},
                                 "data": data, "train": t, "seed": 3})


def state_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])


def state_close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> tuple[bool, float]:
    worst = 0.0
    for k in a:
        for n in a[k]:
            if a[k][n].is_floating_point():
                worst = max(worst, float((a[k][n] - b[k][n]).abs().max()))
                if not torch.allclose(a[k][n], b[k][n], rtol=rtol, atol=atol):
                    return False, worst
    return True, worst


# ---- float tolerances ------------------------------------------------------------------------------------
def reduction_atol(dtype: torch.dtype, magnitude: float, length: int, depth: int = 1, safety: float = 4.0) -> float:
    """Largest |a - b| expected between two evaluations of the same float expression that differ only in
    the order of their reductions (batched vs unbatched kernels, BLAS blocking, compiled vs eager, a 2-rank
    all-reduce vs one sum).

    Each evaluation of a sum of ``length`` terms of size ≤ ``magnitude`` is within γ_n·n·magnitude of the
    exact value in the worst case, and within about sqrt(n)·eps·magnitude when rounding errors are
    independent (the usual case, and what BLAS blocking gives); two evaluations differ by up to twice that.
    Through ``depth`` layers of a network (Lipschitz ≈ 1 after normalisation) the per-layer errors add up.
    ``safety`` covers the constant. Where the exact value is ~0 by cancellation no relative bound exists:
    compare such quantities with their own scale.
    """
    eps = torch.finfo(dtype).eps
    return safety * 2.0 * eps * math.sqrt(max(int(length), 1)) * max(int(depth), 1) * float(magnitude)


def net_reduction_shape(*modules: torch.nn.Module) -> tuple[int, int]:
    """(longest reduction, number of layers) of the linear / conv layers in ``modules``: the ``length`` and
    ``depth`` of :func:`reduction_atol` for a network's output."""
    length, depth = 1, 0
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, torch.nn.Linear):
                length, depth = max(length, m.in_features), depth + 1
            elif isinstance(m, torch.nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                length, depth = max(length, m.in_channels // m.groups * k), depth + 1
    return length, max(depth, 1)


def assert_reduction_close(a: torch.Tensor, b: torch.Tensor, length: int, depth: int = 1,
                           magnitude: float | None = None, what: str = "") -> None:
    """``a`` ≈ ``b`` within :func:`reduction_atol` for their dtype and magnitude (default: max |a|, |b|, 1)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if magnitude is None:
        magnitude = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    tol = reduction_atol(a.dtype, magnitude, length, depth)
    worst = float((a - b).abs().max())
    assert worst <= tol, f"{what}: max |a - b| = {worst:.3g} > {tol:.3g} (dtype {a.dtype}, magnitude " \
                         f"{magnitude:.3g}, reduction length {length}, depth {depth})"


def adam_weight_atol(lr: float, steps: int, grad_rel_err: float, cancellation: float = 10.0) -> float:
    """Bound on |w_a − w_b| after ``steps`` Adam steps from equal weights whose gradients differ by a relative
    ``grad_rel_err`` (e.g. reduction_atol(f32, 1, length, depth) for a 2-rank all-reduce vs one sum).

    Step t's update lr·m̂/(√v̂ + ε) moves by at most lr·δ·Σ_s w_s |g_s|/√v̂ ≤ lr·δ·√t under relative gradient
    perturbations δ (|g_s| ≤ √(t·v̂) for Adam's β2 ≈ 1), so k steps differ by ≤ 2·lr·δ·Σ_t √t (both runs
    err). Reduction error is relative to Σ|terms|, not to |Σ terms|: gradients that are sums of signed
    per-example terms cancel, and ``cancellation`` bounds Σ|terms| / |Σ terms| (no bound exists for
    gradients that are 0 in exact arithmetic: iCT scales its loss for that reason, see its docstring)."""
    return 2.0 * lr * cancellation * grad_rel_err * sum(math.sqrt(t) for t in range(1, steps + 1))
