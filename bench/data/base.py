"""The common shape of every file-backed dataset.

A subclass lists its items once (cheap: names, labels, captions) and decodes one image on demand
through ``load_array``. This base turns that into the dataset contract (``__getitem__`` -> dict), applies
``max_items`` and the ``on_corrupt`` policy, and picks a caption deterministically.

Corrupt images: with ``on_corrupt='fail'`` the ``CorruptImage`` error (naming the file) propagates; with
``'skip'`` the item is replaced by the next readable one (index i+1, i+2, ... wrapping around), a warning
naming the file is printed once per file and the file is recorded in ``skipped`` — never silent.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.preprocess import CorruptImage, hwc_to_chw
from bench.method import ConfigError


def choose_caption(num_captions: int, seed: int, index: int, epoch: int = 0) -> int:
    """Index of the caption item ``index`` uses, a pure function of (seed, index, epoch).

    A hash rather than a shared RNG, so workers, resumes and DDP ranks all pick the same caption.
    """
    if num_captions <= 1:
        return 0
    h = hashlib.blake2b(f"{seed}:{index}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % num_captions


def require_dir(root: str | os.PathLike | None, what: str = "dataset folder") -> Path:
    if root is None:
        raise ConfigError(f"field 'data.root': a {what} is required")
    p = Path(root).expanduser()
    if not p.exists():
        raise ConfigError(f"field 'data.root': {what} {str(p)!r} does not exist")
    if not p.is_dir():
        raise ConfigError(f"field 'data.root': {what} {str(p)!r} is not a directory")
    return p


def require_file(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ConfigError(f"field 'data.root': a {what} is required")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"field 'data.root': {what} {str(p)!r} does not exist")
    return p


class ImageDataset:
    """Base of the file-backed readers. Subclasses set ``self._n`` and implement ``load_array``,
    ``label_of`` and ``describe`` (and ``captions_of`` when they carry text)."""

    channels = 3
    has_captions = False

    def __init__(self, resolution: int, *, num_classes: int = 0, class_names: list[str] | None = None,
                 on_corrupt: str = "fail", max_items: int | None = None, caption_seed: int = 0):
        if on_corrupt not in ("fail", "skip"):
            raise ConfigError(f"field 'data.on_corrupt': expected fail or skip (got {on_corrupt!r})")
        self.resolution = int(resolution)
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.on_corrupt = on_corrupt
        self.max_items = max_items
        self.caption_seed = caption_seed
        self.epoch = 0
        self.skipped: dict[str, str] = {}
        self._n = 0

    # ---- what subclasses provide -------------------------------------------------------------
    def load_array(self, i: int) -> np.ndarray:
        """uint8 R x R x C of item i; raise CorruptImage naming the source on failure."""
        raise NotImplementedError

    def label_of(self, i: int) -> int:
        return -1

    def captions_of(self, i: int) -> list[str]:
        return []

    def describe(self, i: int) -> str:
        """Where item i comes from (file path or archive member), for error reports."""
        return f"item {i}"

    # ---- the dataset contract ----------------------------------------------------------------
    def __len__(self) -> int:
        return self._n if self.max_items is None else min(self._n, self.max_items)

    def set_epoch(self, epoch: int) -> None:
        """Changes which caption an item shows (the training stream may call it each pass)."""
        self.epoch = int(epoch)

    def _check_index(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        return i

    def load_checked(self, i: int) -> np.ndarray:
        arr = self.load_array(i)
        r = self.resolution
        if arr.ndim != 3 or arr.shape[:2] != (r, r) or arr.shape[2] != self.channels or arr.dtype != np.uint8:
            raise CorruptImage(self.describe(i), f"decoded to {arr.dtype} {tuple(arr.shape)}, "
                                                 f"expected uint8 ({r}, {r}, {self.channels})")
        return arr

    def _readable_index(self, i: int) -> tuple[int, np.ndarray]:
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            try:
                return j, self.load_checked(j)
            except CorruptImage as err:
                if self.on_corrupt == "fail":
                    raise CorruptImage(err.source, err.reason + " (set data.on_corrupt=skip to skip "
                                                                "unreadable images)") from None
                if err.source not in self.skipped:
                    self.skipped[err.source] = err.reason
                    print(f"warning: skipping unreadable image {err} (on_corrupt=skip: {len(self.skipped)} "
                          f"skipped so far{self._worker_note()})", file=sys.stderr)
        raise CorruptImage(self.describe(i), "no readable image in the whole dataset")

    @staticmethod
    def _worker_note() -> str:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        return "" if info is None else f" by data-loader worker {info.id}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i, self.epoch)

    def get(self, i: int, epoch: int = 0) -> dict[str, Any]:
        """Item i as seen in pass ``epoch`` (only the chosen caption depends on the pass)."""
        i = self._check_index(i)
        j, arr = self._readable_index(i)
        item: dict[str, Any] = {"image": hwc_to_chw(arr), "label": self.label_of(j)}
        if self.has_captions:
            caps = self.captions_of(j)
            if caps:
                item["caption"] = caps[choose_caption(len(caps), self.caption_seed, i, epoch)]
        return item

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def info(self) -> dict[str, Any]:
        return {"items": len(self), "resolution": self.resolution, "channels": self.channels,
                "num_classes": self.num_classes, "captions": self.has_captions,
                "class_names": list(self.class_names or [])}
