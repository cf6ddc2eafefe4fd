"""Where evaluated images come from, as a stream of batches: npz files (ADM format), image folders,
run folders (sample shards, or the sampler itself) and datasets. Nothing holds all N images at once."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from bench.method import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class SampleBatch:
    images: torch.Tensor                 # uint8 N x 3 x H x W
    labels: torch.Tensor | None = None
    captions: list[str] | None = None
    seeds: list[int] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


def to_nchw_uint8(images: torch.Tensor | np.ndarray, where: str = "images") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8:
        raise ConfigError(f"{where}: expected uint8 images, got {x.dtype}")
    if x.ndim != 4:
        raise ConfigError(f"{where}: expected a 4-d image batch, got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ConfigError(f"{where}: expected RGB images (N,H,W,3), got shape {tuple(x.shape)}")
    return x.contiguous()


# ---- npz ----------------------------------------------------------------------------------------
class NpzArrayStream:
    """Reads rows of one array of an npz without loading it whole (ADM's evaluator does the same)."""

    def __init__(self, path: str | Path, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        with zipfile.ZipFile(self.path) as zf:
            if f"{key}.npy" not in zf.namelist():
                raise ConfigError(f"{self.path}: no array {key!r} (found {sorted(n[:-4] for n in zf.namelist())})")
            with zf.open(f"{key}.npy") as f:
                self.shape, self.dtype, self._fortran = self._header(f)
        if self.dtype.hasobject:   # object arrays are pickles: never read from a user's file
            raise ConfigError(f"{self.path}: array {key!r} holds Python objects (pickled); expected uint8 images")

    @staticmethod
    def _header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
        fmt = np.lib.format
        major, _ = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return shape, dtype, fortran

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def batches(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        stop = len(self) if stop is None else min(stop, len(self))
        row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as f:
            self._header(f)
            if self._fortran:  # not streamable: fall back to one load
                arr = np.load(self.path, allow_pickle=False)[self.key]
                for s in range(start, stop, batch):
                    yield arr[s:min(s + batch, stop)]
                return
            if start:
                f.seek(f.tell() + start * row)
            for s in range(start, stop, batch):
                n = min(batch, stop - s)
                yield np.frombuffer(f.read(n * row), dtype=self.dtype).reshape((n, *self.shape[1:]))


def npz_keys(path: str | Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


def iter_npz(path: str | Path, batch: int = 64, limit: int | None = None) -> Iterator[SampleBatch]:
    """``arr_0`` uint8 NHWC, optional ``arr_1`` labels, ``captions`` strings, ``seeds`` ints."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"samples file {path} does not exist")
    stream = NpzArrayStream(path, "arr_0")
    keys = set(npz_keys(path))
    small = np.load(path, allow_pickle=False)
    try:
        labels = small["arr_1"] if "arr_1" in keys else None
        captions = small["captions"] if "captions" in keys else None
        seeds = small["seeds"] if "seeds" in keys else None
    except ValueError as err:  # an object array: numpy refuses to unpickle it
        raise ConfigError(f"samples file {path}: {err}") from None
    s = 0
    for arr in stream.batches(batch, stop=limit):
        n = arr.shape[0]
        yield SampleBatch(to_nchw_uint8(torch.from_numpy(arr.copy()), f"{path}: arr_0"),
                          None if labels is None else torch.as_tensor(labels[s:s + n]),
                          None if captions is None else [str(c) for c in captions[s:s + n]],
                          None if seeds is None else [int(v) for v in seeds[s:s + n]])
        s += n


def count_npz(path: str | Path) -> int:
    return len(NpzArrayStream(path, "arr_0"))


# ---- folders ------------------------------------------------------------------------------------
def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def iter_folder(folder: str | Path, batch: int = 64, limit: int | None = None) -> Iterator[SampleBatch]:
    from PIL import Image

    files = list_images(folder)[:limit]
    for s in range(0, len(files), batch):
        arrs = []
        for p in files[s:s + batch]:
            with Image.open(p) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1:
            raise ConfigError(f"image folder {folder}: images differ in size {sorted(shapes)[:3]}; resize them first")
        yield SampleBatch(to_nchw_uint8(torch.from_numpy(np.stack(arrs)), str(folder)))


# ---- generators and datasets ----------------------------------------------------------------------
def iter_generator(fn: Callable[[list[int]], Any], seeds: Sequence[int], batch: int = 64) -> Iterator[SampleBatch]:
    """Wrap a function seeds -> uint8 images (or (images, labels, captions)) as a stream."""
    for s in range(0, len(seeds), batch):
        chunk = list(seeds[s:s + batch])
        out = fn(chunk)
        images, labels, captions = (out if isinstance(out, tuple) else (out, None, None))
        yield SampleBatch(to_nchw_uint8(images, "generator"), labels, captions, chunk)


def iter_dataset(dataset, indices: Sequence[int], batch: int = 64) -> Iterator[SampleBatch]:
    for s in range(0, len(indices), batch):
        items = [dataset[int(i)] for i in indices[s:s + batch]]
        captions = [str(it["caption"]) for it in items] if all("caption" in it for it in items) else None
        labels = torch.tensor([int(it.get("label", -1)) for it in items])
        yield SampleBatch(to_nchw_uint8(torch.stack([it["image"] for it in items]), "dataset"), labels, captions,
                          [int(i) for i in indices[s:s + batch]])


def parse_seeds(text: str) -> list[int]:
    """'0-49999' or '0,5,7-9' -> list of ints (EDM's convention)."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise ConfigError(f"seeds {text!r}: expected a list like 0-49999 or 0,3,5-9") from None
    return out
