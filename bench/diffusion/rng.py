"""Per-example random streams.

One torch.Generator per example, seeded from an integer. Drawing ``randn((N, ...))`` draws each
example's slice from its own generator, so example i gets the same numbers whatever else is in the
batch: sample i is identical for any batch size or GPU count, and a DDP rank draws exactly what a
single process would draw for the same examples.
"""
from __future__ import annotations

from typing import Sequence

import torch


class StackedRandom:
    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        # Generators live on CPU when the device is CPU, on the device otherwise (fast on CUDA).
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.generators = [torch.Generator(gen_device).manual_seed(s % (1 << 63)) for s in self.seeds]
        self._gen_device = gen_device

    def __len__(self) -> int:
        return len(self.seeds)

    def _check(self, size: Sequence[int]) -> tuple[int, ...]:
        size = tuple(int(s) for s in size)
        if size[0] != len(self.generators):
            raise ValueError(f"first dimension {size[0]} != number of streams {len(self.generators)}")
        return size

    def randn(self, size: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = self._check(size)
        out = torch.stack([torch.randn(size[1:], generator=g, device=self._gen_device, dtype=dtype)
                           for g in self.generators])
        return out.to(self.device)

    def rand(self, size: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = self._check(size)
        out = torch.stack([torch.rand(size[1:], generator=g, device=self._gen_device, dtype=dtype)
                           for g in self.generators])
        return out.to(self.device)

    def randint(self, low: int, high: int, size: Sequence[int]) -> torch.Tensor:
        size = self._check(size)
        out = torch.stack([torch.randint(low, high, size[1:], generator=g, device=self._gen_device)
                           for g in self.generators])
        return out.to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype if x.dtype.is_floating_point else torch.float32)

    def subset(self, idx: slice | Sequence[int]) -> "StackedRandom":
        """A view on some of the streams (the same generator objects: draws advance them)."""
        new = StackedRandom.__new__(StackedRandom)
        gens = self.generators[idx] if isinstance(idx, slice) else [self.generators[i] for i in idx]
        seeds = self.seeds[idx] if isinstance(idx, slice) else [self.seeds[i] for i in idx]
        new.seeds, new.generators, new.device, new._gen_device = seeds, gens, self.device, self._gen_device
        return new


def example_seed(run_seed: int, position: int) -> int:
    """Seed of the example at ``position`` of the training stream (a 63-bit mix, splitmix64-style)."""
    z = (int(run_seed) * 0x9E3779B97F4A7C15 + int(position) + 0x632BE59BD9B4E019) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & ((1 << 63) - 1)
