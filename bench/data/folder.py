"""Image-folder readers: generic folders, ImageNet (ILSVRC2012 synset folders) and CelebA-HQ.

Generic folder layouts (option ``labels``):
- ``auto`` (default): ``dataset.json`` at the root (EDM style, ``{"labels": [[relpath, label], ...]}``) if
  present; else class subfolders (sorted names -> labels 0..K-1) if any subfolder holds images; else a flat,
  unlabelled folder.
- ``folders`` / ``json`` / ``none`` force one of those.
Images are ADM-centre-cropped (option ``fit``: crop | pad | lanczos) to ``spec.resolution``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import json
import os
from pathlib import Path

import numpy as np

from bench.data.base import ImageDataset, require_dir
from bench.data.preprocess import is_image_file, load_rgb
from bench.data.registry import check_options, reader
from bench.method import ConfigError

if TYPE_CHECKING:
    from bench.data.spec import DatasetSpec


def list_images(root: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` in a fixed (sorted) order."""
    if not recursive:
        return sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p.name))
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f))
    return out


class FileListDataset(ImageDataset):
    """Images from a list of files with optional labels."""

    def __init__(self, files: list[Path], labels: list[int] | None, resolution: int, *, fit: str = "crop",
                 class_names: list[str] | None = None, num_classes: int | None = None, **kw):
        n_cls = num_classes if num_classes is not None else (len(class_names) if class_names else 0)
        super().__init__(resolution, num_classes=n_cls, class_names=class_names, **kw)
        self.files, self.labels, self.fit = files, labels, fit
        self._n = len(files)

    def load_array(self, i: int) -> np.ndarray:
        return load_rgb(self.files[i], self.resolution, fit=self.fit)

    def label_of(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    def describe(self, i: int) -> str:
        return str(self.files[i])


def _read_dataset_json(root: Path) -> dict[str, int]:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable dataset.json ({err})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if labels is None:
        return {}
    try:
        return {str(name): int(lab) for name, lab in labels}
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: 'labels' must be a list of [relative path, int label] pairs") from None


def build_folder(root: str | Path | None, resolution: int, *, labels: str = "auto", fit: str = "crop",
                 **kw) -> FileListDataset:
    base = require_dir(root)
    if labels not in ("auto", "folders", "json", "none"):
        raise ConfigError(f"field 'data.options.labels': expected auto, folders, json or none (got {labels!r})")
    if labels == "json" or (labels == "auto" and (base / "dataset.json").is_file()):
        files = list_images(base)
        table = _read_dataset_json(base)
        if not table:
            return _checked(FileListDataset(files, None, resolution, fit=fit, **kw), base)
        rel = [f.relative_to(base).as_posix() for f in files]
        missing = [r for r in rel if r not in table]
        if missing:
            raise ConfigError(f"{base / 'dataset.json'}: no label for {missing[0]!r} ({len(missing)} files lack one)")
        labs = [table[r] for r in rel]
        return _checked(FileListDataset(files, labs, resolution, fit=fit, num_classes=max(labs) + 1, **kw), base)
    subdirs = sorted(d for d in base.iterdir() if d.is_dir())
    class_dirs = [d for d in subdirs if list_images(d)] if labels != "none" else []
    if labels == "folders" and not class_dirs:
        raise ConfigError(f"field 'data.root': {str(base)!r} has no class subfolders with images")
    if class_dirs:
        loose = list_images(base, recursive=False)
        if loose:
            raise ConfigError(f"field 'data.root': {str(base)!r} mixes class subfolders with loose images "
                              f"(e.g. {loose[0].name!r}); move them or set data.options.labels=none")
        files, labs = [], []
        for k, d in enumerate(class_dirs):
            imgs = list_images(d)
            files += imgs
            labs += [k] * len(imgs)
        names = [d.name for d in class_dirs]
        return _checked(FileListDataset(files, labs, resolution, fit=fit, class_names=names, **kw), base)
    return _checked(FileListDataset(list_images(base), None, resolution, fit=fit, **kw), base)


def _checked(ds: FileListDataset, root: Path) -> FileListDataset:
    if len(ds.files) == 0:
        raise ConfigError(f"field 'data.root': dataset folder {str(root)!r} contains no images "
                          f"({', '.join(('.png', '.jpg', '.jpeg', '...'))})")
    return ds


def _common(spec: DatasetSpec) -> dict:
    return dict(on_corrupt=spec.on_corrupt, max_items=spec.max_items,
                caption_seed=int(spec.options.get("caption_seed", 0)))


@reader("folder")
def _build_folder(spec: DatasetSpec) -> FileListDataset:
    check_options(spec, {"labels", "fit", "caption_seed"})
    return build_folder(spec.root, spec.resolution, labels=spec.options.get("labels", "auto"),
                        fit=spec.options.get("fit", "crop"), **_common(spec))


# ---- ImageNet ------------------------------------------------------------------------------------
IMAGENET_RESOLUTIONS = (64, 128, 256, 512)
SYNSET_FILES = ("LOC_synset_mapping.txt", "synsets.txt", "synset_words.txt")


def imagenet_synsets(root: Path) -> list[str]:
    """The fixed class order: a synset list file in ``root`` if present (first token per line), else the
    sorted synset folders of ``train`` — for ILSVRC2012 both give the standard 0..999 order."""
    for name in SYNSET_FILES:
        path = root / name
        if path.is_file():
            wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            if wnids:
                return wnids
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(f"field 'data.root': {str(root)!r} has neither a synset list "
                          f"({' / '.join(SYNSET_FILES)}) nor a train/ folder of synset folders")
    wnids = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not wnids:
        raise ConfigError(f"field 'data.root': {str(train)!r} contains no synset folders")
    return wnids


def build_imagenet(root: str | Path | None, resolution: int, split: str = "train", **kw) -> FileListDataset:
    base = require_dir(root, "ImageNet root")
    if split not in ("train", "val"):
        raise ConfigError(f"field 'data.split': ImageNet split must be train or val (got {split!r})")
    wnids = imagenet_synsets(base)
    split_dir = require_dir(base / split, f"ImageNet {split} folder")
    index = {w: k for k, w in enumerate(wnids)}
    files, labs = [], []
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if d.name not in index:
            raise ConfigError(f"{d}: folder {d.name!r} is not a synset of the class list ({len(wnids)} synsets)")
        imgs = list_images(d)
        files += imgs
        labs += [index[d.name]] * len(imgs)
    if not files:
        raise ConfigError(f"field 'data.root': ImageNet {split} folder {str(split_dir)!r} contains no images "
                          f"(expected {split}/<synset>/*.JPEG)")
    return FileListDataset(files, labs, resolution, fit="crop", class_names=wnids, **kw)


def _check_standard_resolution(spec: DatasetSpec, allowed: tuple[int, ...], what: str) -> None:
    if spec.resolution not in allowed and not spec.options.get("any_resolution"):
        raise ConfigError(f"field 'data.resolution': {what} is used at {allowed} "
                          f"(got {spec.resolution}; set data.options.any_resolution=true to override)")


@reader("imagenet")
def _build_imagenet(spec: DatasetSpec) -> FileListDataset:
    check_options(spec, {"caption_seed", "any_resolution"})
    _check_standard_resolution(spec, IMAGENET_RESOLUTIONS, "ImageNet")
    return build_imagenet(spec.root, spec.resolution, spec.split, **_common(spec))


# ---- CelebA-HQ -----------------------------------------------------------------------------------
CELEBAHQ_RESOLUTIONS = (256, 512, 1024)


@reader("celebahq")
def _build_celebahq(spec: DatasetSpec) -> FileListDataset:
    """A folder of CelebA-HQ images (any source size, usually 1024^2), unconditional."""
    check_options(spec, {"caption_seed", "any_resolution"})
    _check_standard_resolution(spec, CELEBAHQ_RESOLUTIONS, "CelebA-HQ")
    return build_folder(spec.root, spec.resolution, labels="none", **_common(spec))
