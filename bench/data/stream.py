"""The deterministic training stream.

The stream is an endless sequence of example positions 0, 1, 2, ...; position p maps to dataset
index perm_e[p mod N] where e = p // N and perm_e is a permutation seeded by (seed, e). A step that
starts at position P with global batch B reads positions P .. P+B-1; rank r of W reads the r-th
contiguous slice. So the data depends only on (seed, position): resume restarts at the saved
position, and W ranks together read exactly what one process reads.

Each example also gets a seed of its own (bench.diffusion.rng.example_seed(seed, position)) from
which all of its training noise is drawn.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from bench.diffusion.rng import StackedRandom, example_seed
from bench.method import Batch


def _pyramid(x: torch.Tensor, resolutions: Sequence[int]) -> dict[int, torch.Tensor]:
    from bench.data.pyramid import resolution_views
    return resolution_views(x, resolutions)


class StreamPositions(Dataset):
    """Map-style view: item p of the stream -> (position, dataset item)."""

    def __init__(self, dataset: Any, seed: int):
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset, self.seed, self.n = dataset, int(seed), len(dataset)
        self._perm_epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def __len__(self) -> int:  # nominal; positions beyond it are valid (endless stream)
        return 1 << 62

    def __getitem__(self, position: int) -> dict:
        idx, ds = self.index(position), self.dataset
        # Datasets with per-epoch choices (e.g. which caption) expose get(i, epoch).
        item = dict(ds.get(idx, position // self.n) if hasattr(ds, "get") else ds[idx])
        item["position"] = position
        return item


class PositionBatches:
    """Batch sampler: lists of positions for this rank, step after step, from ``start``."""

    def __init__(self, start: int, global_batch: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        self.start, self.global_batch, self.rank, self.local = start, global_batch, rank, global_batch // world

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start
        while True:
            lo = pos + self.rank * self.local
            yield list(range(lo, lo + self.local))
            pos += self.global_batch


class Collate:
    """Items -> Batch: uint8 -> [-1, 1], resolution views by average pooling, labels, text, per-example rng."""

    def __init__(self, resolutions: Sequence[int], seed: int):
        self.resolutions, self.seed = tuple(resolutions), seed

    def __call__(self, items: list[dict]) -> Batch:
        x = torch.stack([it["image"] for it in items]).float() / 127.5 - 1.0
        images = _pyramid(x, self.resolutions)
        ids = [int(it.get("label", -1)) for it in items]
        labels = torch.tensor(ids, dtype=torch.long)
        text = torch.stack([it["text"] for it in items]) if "text" in items[0] else None
        seeds = [example_seed(self.seed, it["position"]) for it in items]
        # Generators are made here, in the consumer process, by Batch users: keep seeds only.
        return Batch(images, labels if max(ids) >= 0 else None, text, StackedRandom(seeds))


def make_loader(dataset: Any, *, seed: int, start: int, global_batch: int, resolutions: Sequence[int],
                rank: int = 0, world: int = 1, workers: int = 0) -> DataLoader:
    return DataLoader(StreamPositions(dataset, seed), batch_sampler=PositionBatches(start, global_batch, rank, world),
                      collate_fn=Collate(resolutions, seed), num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers > 0 else None)
