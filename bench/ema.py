"""Evaluation EMAs with half-lives in images (EDM): beta = 0.5 ** (batch / halflife).

With ramp-up, the half-life is at most ``rampup * images seen``, so early EMAs forget the random
initialisation quickly. Several half-lives are tracked at once; index 0 is the primary one.

Only the modules a stage trains are averaged (``modules``; default all): frozen networks (a CD teacher,
greedy growing's frozen core) and networks a method updates itself (a consistency target) are not
copied into shadows at all, and ``copy_to`` leaves them as they are. One ``torch._foreach_lerp_`` updates
every floating tensor of every half-life per step; integer buffers are copied.
"""
from __future__ import annotations

from typing import Iterable

import torch

from bench.method import Method


class EMA:
    def __init__(self, method: Method, halflife_kimg: list[float], rampup: float | None = 0.05,
                 modules: Iterable[str] | None = None):
        self.halflife_images = [h * 1000.0 for h in halflife_kimg]
        self.rampup = rampup
        mods = method.modules()
        self.names = list(mods) if modules is None else [n for n in mods if n in set(modules)]
        self.shadows = [self._snapshot(method) for _ in self.halflife_images]
        self._bind(method)

    def _snapshot(self, method: Method) -> dict[str, dict[str, torch.Tensor]]:
        mods = method.modules()
        return {name: {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in mods[name].state_dict().items()} for name in self.names}

    def _bind(self, method: Method) -> None:
        """Pair each shadow tensor with the live tensor it follows (state_dict tensors share storage)."""
        mods = method.modules()
        live = {name: mods[name].state_dict(keep_vars=False) for name in self.names}
        self._float_live, self._float_shadow, self._other = [], [], []
        for i, shadow in enumerate(self.shadows):
            fl, fs = [], []
            for name in self.names:
                for k, v in live[name].items():
                    if v.is_floating_point():
                        fl.append(v)
                        fs.append(shadow[name][k])
                    elif i == 0:
                        self._other.append((v, [s[name][k] for s in self.shadows]))
            self._float_live.append(fl)
            self._float_shadow.append(fs)
        self._needs_cast = any(v.dtype != torch.float32 for v in self._float_live[0]) if self._float_live else False
        self._bound_to = id(method)

    def beta(self, index: int, batch: int, images: int) -> float:
        h = self.halflife_images[index]
        if self.rampup is not None:
            h = min(h, self.rampup * images)
        return 0.5 ** (batch / max(h, 1e-8))

    @torch.no_grad()
    def update(self, method: Method, batch: int, images: int) -> None:
        if id(method) != self._bound_to:
            self._bind(method)
        shadows, lives, weights = [], [], []
        for i in range(len(self.shadows)):
            w = 1.0 - self.beta(i, batch, images)
            live = [v.float() for v in self._float_live[i]] if self._needs_cast else self._float_live[i]
            shadows += self._float_shadow[i]
            lives += live
            weights += [w] * len(live)
        if shadows:
            torch._foreach_lerp_(shadows, lives, weights)
        for v, targets in self._other:
            for s in targets:
                s.copy_(v)

    @torch.no_grad()
    def copy_to(self, method: Method, index: int = 0) -> None:
        """Load EMA ``index`` into the networks it averages (for sampling, or to grow from it)."""
        mods = method.modules()
        for name in self.names:
            m = mods[name]
            sd = m.state_dict()
            m.load_state_dict({k: self.shadows[index][name][k].to(sd[k].dtype) for k in sd})

    def state_dict(self) -> dict:
        return {"halflife_images": self.halflife_images, "modules": list(self.names), "shadows": self.shadows}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadows"]) != len(self.shadows):
            raise ValueError(f"checkpoint has {len(state['shadows'])} EMAs, config asks for {len(self.shadows)}")
        for mine, theirs in zip(self.shadows, state["shadows"]):
            missing = [n for n in mine if n not in theirs]
            if missing:
                raise KeyError(f"checkpoint EMA lacks modules {missing}")
            for name in mine:
                for k in mine[name]:
                    mine[name][k].copy_(theirs[name][k])

    @classmethod
    def from_state(cls, method: Method, state: dict) -> "EMA":
        """The EMA a checkpoint holds, averaging the modules it names (older checkpoints: every module)."""
        return cls(method, [h / 1000 for h in state["halflife_images"]], None,
                   modules=state.get("modules") or list(state["shadows"][0]))
