"""MS-COCO 2014 / 2017 with captions, and the FID-30K evaluation subset.

Layout (as distributed)::

    <root>/annotations/captions_train2014.json   (also val2014, train2017, val2017)
    <root>/train2014/COCO_train2014_000000000009.jpg ...   (2017: <root>/train2017/000000000009.jpg)

``split`` is one of train2014, val2014, train2017, val2017, or ``fid30k``: the evaluation subset of
``n`` (default 30,000) val2014 image / caption pairs drawn with a fixed seed (see ``fid30k_pairs``).
Each image has ~5 captions; an item shows one, chosen deterministically from (caption_seed, index, epoch).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.data.base import ImageDataset, require_dir
from bench.data.preprocess import load_rgb
from bench.data.registry import check_options, reader
from bench.method import ConfigError

if TYPE_CHECKING:
    from bench.data.spec import DatasetSpec

COCO_SPLITS = ("train2014", "val2014", "train2017", "val2017")
FID30K_SIZE = 30_000
FID30K_SEED = 0


def load_captions(root: Path, split: str) -> list[tuple[int, str, list[str]]]:
    """(image id, file name, captions ordered by annotation id) for every image with a caption, by image id."""
    path = root / "annotations" / f"captions_{split}.json"
    if not path.is_file():
        raise ConfigError(f"field 'data.root': COCO caption file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        caps: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            caps.setdefault(int(ann["image_id"]), []).append((int(ann["id"]), str(ann["caption"]).strip()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: not a COCO captions file ({type(err).__name__}: {err})") from None
    out = []
    for image_id in sorted(caps):
        if image_id not in images:
            raise ConfigError(f"{path}: annotation refers to unknown image id {image_id}")
        out.append((image_id, images[image_id], [c for _, c in sorted(caps[image_id])]))
    if not out:
        raise ConfigError(f"{path}: no captions")
    return out


def fid30k_pairs(root: str | Path, n: int = FID30K_SIZE, seed: int = FID30K_SEED) -> list[dict[str, Any]]:
    """The FID-30K subset: ``n`` distinct val2014 images drawn with ``numpy.random.default_rng(seed)`` from
    the images sorted by id, each with one of its captions drawn from the same generator.

    Deterministic given (annotation file, n, seed); the drawn order is kept (item k = k-th draw).
    """
    entries = load_captions(Path(root), "val2014")
    if n > len(entries):
        raise ConfigError(f"field 'data.options.subset_size': {n} pairs requested but val2014 has only "
                          f"{len(entries)} captioned images")
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(entries))[:n]
    choice = rng.integers(0, 1 << 31, size=n)
    out = []
    for k, idx in enumerate(picks.tolist()):
        image_id, fname, caps = entries[idx]
        out.append({"image_id": image_id, "file_name": fname, "caption": caps[int(choice[k]) % len(caps)]})
    return out


def write_pairs(pairs: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the subset as JSON lines (image_id, file_name, caption), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    os.replace(tmp, path)
    return path


class CocoDataset(ImageDataset):
    has_captions = True

    def __init__(self, root: str | Path | None, resolution: int, split: str = "train2014", *,
                 subset_size: int = FID30K_SIZE, subset_seed: int = FID30K_SEED, fit: str = "crop", **kw):
        base = require_dir(root, "COCO root")
        super().__init__(resolution, **kw)
        self.root, self.fit = base, fit
        if split == "fid30k":
            pairs = fid30k_pairs(base, subset_size, subset_seed)
            self.image_dir = base / "val2014"
            self.entries = [(p["image_id"], p["file_name"], [p["caption"]]) for p in pairs]
        elif split in COCO_SPLITS:
            self.image_dir = base / split
            self.entries = load_captions(base, split)
        else:
            raise ConfigError(f"field 'data.split': COCO split must be one of {', '.join(COCO_SPLITS)}, fid30k "
                              f"(got {split!r})")
        require_dir(self.image_dir, "COCO image folder")
        self._n = len(self.entries)

    def load_array(self, i: int) -> np.ndarray:
        return load_rgb(self.image_dir / self.entries[i][1], self.resolution, fit=self.fit)

    def captions_of(self, i: int) -> list[str]:
        return self.entries[i][2]

    def describe(self, i: int) -> str:
        return str(self.image_dir / self.entries[i][1])


@reader("coco")
def _build_coco(spec: DatasetSpec) -> CocoDataset:
    opts = dict(spec.options)
    check_options(spec, {"subset_size", "subset_seed", "fit", "caption_seed"})
    split = "train2014" if spec.split == "train" else ("val2014" if spec.split == "val" else spec.split)
    return CocoDataset(spec.root, spec.resolution, split, subset_size=int(opts.get("subset_size", FID30K_SIZE)),
                       subset_seed=int(opts.get("subset_seed", FID30K_SEED)), fit=opts.get("fit", "crop"),
                       on_corrupt=spec.on_corrupt, max_items=spec.max_items,
                       caption_seed=int(opts.get("caption_seed", 0)))
