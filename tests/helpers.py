"""Small shared helpers for the tests (tiny run configs, weight comparison)."""
from __future__ import annotations

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
