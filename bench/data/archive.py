"""The fast training formats: EDM-style zip archives and webdataset-style tar shards (readers + writers).

Zip (EDM layout, readable by EDM's own ``ImageFolderDataset``)::

    00000/img00000000.png ...      images, already at the prepared resolution
    dataset.json                   {"labels": [[name, label], ...] | null,
                                    "captions": [[name, [caption, ...]], ...],   (our addition)
                                    "class_names": [...]}                        (our addition)
    manifest.json                  count, classes, content hash, skipped count (bench.data.manifest)

Shards (webdataset naming; read with the stdlib ``tarfile``, no ``webdataset`` package needed)::

    shard-00000.tar: 00000000.png, 00000000.cls (label as text), 00000000.json ({"captions": [...]}), ...
    manifest.json                  next to the shards

Readers open archives lazily and per process, so a dataset object can be pickled into loader workers.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bench.data.base import ImageDataset
from bench.data.preprocess import CorruptImage, adm_center_crop, decode_png_array, encode_png, is_image_file
from bench.data.registry import reader
from bench.method import ConfigError

if TYPE_CHECKING:
    from bench.data.spec import DatasetSpec

MANIFEST = "manifest.json"


def _resize_if_needed(arr: np.ndarray, resolution: int, source: str) -> np.ndarray:
    if arr.shape[0] == resolution and arr.shape[1] == resolution:
        return arr
    try:
        im = Image.fromarray(arr if arr.shape[2] != 1 else arr[:, :, 0])
        out = adm_center_crop(im.convert("RGB"), resolution)
    except Exception as err:
        raise CorruptImage(source, f"cannot resize: {err}") from None
    return out


# ---- zip ---------------------------------------------------------------------------------------
class ZipDataset(ImageDataset):
    """An EDM-style zip archive (images + optional dataset.json labels / captions)."""

    def __init__(self, path: str | Path, resolution: int, **kw):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(f"field 'data.root': zip archive {str(self.path)!r} does not exist")
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
                meta = json.loads(zf.read("dataset.json")) if "dataset.json" in names else {}
                self.manifest = json.loads(zf.read(MANIFEST)) if MANIFEST in names else None
        except zipfile.BadZipFile as err:
            raise ConfigError(f"{self.path}: not a readable zip archive (truncated or corrupt: {err})") from None
        except (json.JSONDecodeError, KeyError, zipfile.BadZipFile, OSError) as err:
            raise ConfigError(f"{self.path}: unreadable dataset.json / manifest.json ({err})") from None
        self.names = sorted(n for n in names if is_image_file(n))
        if not self.names:
            raise ConfigError(f"field 'data.root': zip archive {str(self.path)!r} contains no images")
        labels = (meta or {}).get("labels")
        self.labels: list[int] | None = None
        class_names = (meta or {}).get("class_names")
        num_classes = 0
        if labels:
            table = {str(k): int(v) for k, v in labels}
            missing = [n for n in self.names if n not in table]
            if missing:
                raise ConfigError(f"{self.path}: dataset.json has no label for {missing[0]!r}")
            self.labels = [table[n] for n in self.names]
            num_classes = len(class_names) if class_names else max(self.labels) + 1
        caps = (meta or {}).get("captions") or []
        self._captions = {str(k): [str(c) for c in v] for k, v in caps}
        self.has_captions = bool(self._captions)
        super().__init__(resolution, num_classes=num_classes, class_names=class_names, **kw)
        self._n = len(self.names)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"], state["_pid"] = None, -1
        return state

    def _file(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}"

    def load_array(self, i: int) -> np.ndarray:
        try:
            data = self._file().read(self.names[i])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise CorruptImage(self.describe(i), f"{type(err).__name__}: {err}") from None
        arr = decode_png_array(data, self.describe(i))
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return _resize_if_needed(arr, self.resolution, self.describe(i))

    def label_of(self, i: int) -> int:
        return -1 if self.labels is None else self.labels[i]

    def captions_of(self, i: int) -> list[str]:
        return self._captions.get(self.names[i], [])


@reader("zip")
def _build_zip(spec: DatasetSpec) -> ZipDataset:
    return ZipDataset(spec.root or "", spec.resolution, on_corrupt=spec.on_corrupt, max_items=spec.max_items,
                      caption_seed=int(spec.options.get("caption_seed", 0)))


# ---- tar shards --------------------------------------------------------------------------------
def list_shards(root: Path) -> list[Path]:
    if root.is_file() and root.suffix == ".tar":
        return [root]
    if not root.is_dir():
        raise ConfigError(f"field 'data.root': shard folder {str(root)!r} does not exist")
    shards = sorted(root.glob("*.tar"))
    if not shards:
        raise ConfigError(f"field 'data.root': shard folder {str(root)!r} contains no .tar shards")
    return shards


class ShardDataset(ImageDataset):
    """Tar shards in webdataset naming (key.png + key.cls + key.json), indexed once for random access."""

    def __init__(self, root: str | Path, resolution: int, **kw):
        self.root = Path(root).expanduser()
        self.shards = list_shards(self.root)
        # (shard index, image member offset, size, key); labels and captions kept in memory (small).
        self.index: list[tuple[int, int, int, str]] = []
        self.labels_: list[int] = []
        self._caps: list[list[str]] = []
        for s, shard in enumerate(self.shards):
            self._index_shard(s, shard)
        manifest_path = (self.root if self.root.is_dir() else self.root.parent) / MANIFEST
        self.manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        class_names = (self.manifest or {}).get("class_names") or None
        has_labels = any(lab >= 0 for lab in self.labels_)
        num_classes = (len(class_names) if class_names else max(self.labels_) + 1) if has_labels else 0
        super().__init__(resolution, num_classes=num_classes, class_names=class_names, **kw)
        self.has_captions = any(self._caps)
        self._n = len(self.index)
        if self._n == 0:
            raise ConfigError(f"field 'data.root': shards under {str(self.root)!r} contain no images")
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def _index_shard(self, s: int, shard: Path) -> None:
        groups: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.rpartition(".")
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    if is_image_file(m.name):
                        groups[key]["img"] = (m.offset_data, m.size)
                    elif ext in ("cls", "json"):
                        groups[key][ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ConfigError(f"{shard}: unreadable tar shard ({type(err).__name__}: {err})") from None
        for key in order:
            g = groups[key]
            if "img" not in g:
                continue
            self.index.append((s, g["img"][0], g["img"][1], key))
            self.labels_.append(int(g["cls"].decode().strip()) if "cls" in g else -1)
            meta = json.loads(g["json"]) if "json" in g else {}
            self._caps.append([str(c) for c in meta.get("captions", [])])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1
        return state

    def _handle(self, s: int):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if s not in self._handles:
            self._handles[s] = open(self.shards[s], "rb")
        return self._handles[s]

    def describe(self, i: int) -> str:
        s, _, _, key = self.index[i]
        return f"{self.shards[s]}:{key}"

    def load_array(self, i: int) -> np.ndarray:
        s, offset, size, _ = self.index[i]
        fh = self._handle(s)
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise CorruptImage(self.describe(i), f"shard truncated ({len(data)} of {size} bytes)")
        arr = decode_png_array(data, self.describe(i))
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return _resize_if_needed(arr, self.resolution, self.describe(i))

    def label_of(self, i: int) -> int:
        return self.labels_[i]

    def captions_of(self, i: int) -> list[str]:
        return self._caps[i]


@reader("webdataset")
def _build_shards(spec: DatasetSpec) -> ShardDataset:
    if spec.root is None:
        raise ConfigError("field 'data.root': a folder of .tar shards is required")
    return ShardDataset(spec.root, spec.resolution, on_corrupt=spec.on_corrupt, max_items=spec.max_items,
                        caption_seed=int(spec.options.get("caption_seed", 0)))


# ---- writers -----------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ZipWriter:
    """Writes an EDM-style zip to a temporary name and renames it into place on ``close``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        self.labels: list[list[Any]] = []
        self.captions: list[list[Any]] = []
        self.count = 0

    def add(self, arr: np.ndarray, label: int, captions: list[str]) -> None:
        name = f"{self.count // 1000:05d}/img{self.count:08d}.png"
        self._zip.writestr(name, encode_png(arr))  # PNG is already compressed: store
        self.labels.append([name, int(label)])
        if captions:
            self.captions.append([name, list(captions)])
        self.count += 1

    def close(self, manifest: dict[str, Any]) -> Path:
        has_labels = any(lab >= 0 for _, lab in self.labels)
        meta = {"labels": self.labels if has_labels else None, "captions": self.captions or None,
                "class_names": manifest.get("class_names") or None}
        self._zip.writestr("dataset.json", json.dumps(meta))
        self._zip.writestr(MANIFEST, json.dumps(manifest, indent=1))
        self._zip.close()
        os.replace(self._tmp, self.path)
        _atomic_write_bytes(manifest_sidecar(self.path), json.dumps(manifest, indent=1).encode())
        return self.path

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


class ShardWriter:
    """Writes ``shard-NNNNN.tar`` files of ``shard_size`` samples each into a folder (each shard atomic)."""

    def __init__(self, folder: str | Path, shard_size: int = 1000):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.count, self.shard = shard_size, 0, -1
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self.written: list[Path] = []

    def _roll(self) -> None:
        self._finish_shard()
        self.shard += 1
        final = self.folder / f"shard-{self.shard:05d}.tar"
        self._tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)

    def _finish_shard(self) -> None:
        if self._tar is not None and self._tmp is not None:
            self._tar.close()
            final = self.folder / f"shard-{self.shard:05d}.tar"
            os.replace(self._tmp, final)
            self.written.append(final)
            self._tar = None

    def _put(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # reproducible shards
        self._tar.addfile(info, io.BytesIO(data))  # type: ignore[union-attr]

    def add(self, arr: np.ndarray, label: int, captions: list[str]) -> None:
        if self.count % self.shard_size == 0:
            self._roll()
        key = f"{self.count:08d}"
        self._put(f"{key}.png", encode_png(arr))
        if label >= 0:
            self._put(f"{key}.cls", str(int(label)).encode())
        if captions:
            self._put(f"{key}.json", json.dumps({"captions": list(captions)}).encode())
        self.count += 1

    def close(self, manifest: dict[str, Any]) -> Path:
        self._finish_shard()
        _atomic_write_bytes(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        return self.folder

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def manifest_sidecar(zip_path: Path) -> Path:
    """``out.zip`` -> ``out.manifest.json`` (readable without opening the archive)."""
    return zip_path.with_name(zip_path.stem + ".manifest.json")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a prepared zip (inside it) or shard folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        m = p / MANIFEST
        if not m.is_file():
            raise ConfigError(f"{p}: no {MANIFEST} (not prepared by `bench data prepare`?)")
        return json.loads(m.read_text())
    if not p.is_file():
        raise ConfigError(f"{p}: no such zip archive or shard folder")
    try:
        with zipfile.ZipFile(p) as zf:
            if MANIFEST not in zf.namelist():
                raise ConfigError(f"{p}: archive has no {MANIFEST} (not prepared by `bench data prepare`?)")
            return json.loads(zf.read(MANIFEST))
    except zipfile.BadZipFile as err:
        raise ConfigError(f"{p}: not a readable zip archive (truncated or corrupt: {err})") from None
