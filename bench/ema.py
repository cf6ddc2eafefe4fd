"""Evaluation EMAs with half-lives in images (EDM): beta = 0.5 ** (batch / halflife).

With ramp-up, the half-life is at most ``rampup * images seen``, so early EMAs forget the random
initialisation quickly. Several half-lives are tracked at once; index 0 is the primary one.
"""
from __future__ import annotations

import torch

from bench.method import Method


class EMA:
    def __init__(self, method: Method, halflife_kimg: list[float], rampup: float | None = 0.05):
        self.halflife_images = [h * 1000.0 for h in halflife_kimg]
        self.rampup = rampup
        self.shadows = [self._snapshot(method) for _ in self.halflife_images]

    @staticmethod
    def _snapshot(method: Method) -> dict[str, dict[str, torch.Tensor]]:
        return {name: {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in m.state_dict().items()} for name, m in method.modules().items()}

    def beta(self, index: int, batch: int, images: int) -> float:
        h = self.halflife_images[index]
        if self.rampup is not None:
            h = min(h, self.rampup * images)
        return 0.5 ** (batch / max(h, 1e-8))

    @torch.no_grad()
    def update(self, method: Method, batch: int, images: int) -> None:
        mods = method.modules()
        for i, shadow in enumerate(self.shadows):
            b = self.beta(i, batch, images)
            for name, m in mods.items():
                for k, v in m.state_dict().items():
                    s = shadow[name][k]
                    if v.is_floating_point():
                        s.lerp_(v.float(), 1.0 - b)
                    else:
                        s.copy_(v)

    @torch.no_grad()
    def copy_to(self, method: Method, index: int = 0) -> None:
        """Load EMA ``index`` into the method's networks (for sampling, or to grow from it)."""
        for name, m in method.modules().items():
            sd = m.state_dict()
            m.load_state_dict({k: self.shadows[index][name][k].to(sd[k].dtype) for k in sd})

    def state_dict(self) -> dict:
        return {"halflife_images": self.halflife_images, "shadows": self.shadows}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadows"]) != len(self.shadows):
            raise ValueError(f"checkpoint has {len(state['shadows'])} EMAs, config asks for {len(self.shadows)}")
        for mine, theirs in zip(self.shadows, state["shadows"]):
            for name in mine:
                for k in mine[name]:
                    mine[name][k].copy_(theirs[name][k])
