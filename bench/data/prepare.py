"""`bench data prepare`: convert any readable dataset into the fast training format with a manifest.

The output is an EDM-style zip (``--out x.zip``) or a folder of tar shards (``--out dir``), images
already at the target resolution. Unreadable images are skipped, listed with their reason in a report
file, and counted in the manifest. The manifest's ``content_hash`` is a sha256 over the decoded pixels,
labels and captions in order, so it does not depend on the PNG encoder.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from bench.data.archive import ShardWriter, ZipWriter
from bench.data.preprocess import CorruptImage
from bench.data.spec import DatasetSpec, build_dataset
from bench.method import ConfigError

MANIFEST_VERSION = 1


class ContentHash:
    """Order-sensitive sha256 of (pixels, shape, label, captions) per item."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, arr: np.ndarray, label: int, captions: list[str]) -> None:
        self._h.update(json.dumps([list(arr.shape), int(label), list(captions)]).encode())
        self._h.update(np.ascontiguousarray(arr).tobytes())

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()


# One dataset per worker process, built from the (picklable) spec in the pool initializer.
_WORKER_DS: Any = None


def _init_worker(spec_json: str) -> None:
    global _WORKER_DS
    _WORKER_DS = build_dataset(DatasetSpec.model_validate_json(spec_json), with_text=False)


def _load(ds: Any, i: int) -> tuple[int, np.ndarray | None, int, list[str], str, str]:
    try:
        arr = ds.load_checked(i)
        return i, arr, ds.label_of(i), ds.captions_of(i), "", ""
    except CorruptImage as err:
        return i, None, -1, [], err.source, err.reason


def _load_in_worker(i: int):
    return _load(_WORKER_DS, i)


def _iterate(ds: Any, spec: DatasetSpec, workers: int) -> Iterator[tuple]:
    n = len(ds)
    if workers <= 0:
        for i in range(n):
            yield _load(ds, i)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(spec.model_dump_json(),)) as pool:
        yield from pool.imap(_load_in_worker, range(n), chunksize=8)


def default_report_path(out: Path, fmt: str) -> Path:
    return out / "skipped.txt" if fmt == "shards" else out.with_name(out.stem + ".skipped.txt")


def output_format(out: Path, fmt: str | None) -> str:
    if fmt is None:
        return "zip" if out.suffix == ".zip" else "shards"
    if fmt not in ("zip", "shards"):
        raise ConfigError(f"--format: expected zip or shards (got {fmt!r})")
    if fmt == "zip" and out.suffix != ".zip":
        raise ConfigError(f"--out: a zip output must end in .zip (got {str(out)!r})")
    return fmt


def prepare(spec: DatasetSpec, out: str | Path, *, fmt: str | None = None, workers: int = 0,
            shard_size: int = 1000, on_corrupt: str = "skip", progress: bool = True) -> dict[str, Any]:
    """Convert ``spec``'s dataset into ``out``; returns the manifest (also written next to / inside it)."""
    out = Path(out).expanduser()
    fmt = output_format(out, fmt)
    if on_corrupt not in ("skip", "fail"):
        raise ConfigError(f"--on-corrupt: expected skip or fail (got {on_corrupt!r})")
    ds = build_dataset(spec, with_text=False)
    if getattr(ds, "load_checked", None) is None:
        raise ConfigError(f"kind {spec.kind!r} cannot be prepared (it is generated, not read from files)")
    writer: ZipWriter | ShardWriter = ZipWriter(out) if fmt == "zip" else ShardWriter(out, shard_size)
    digest, skipped = ContentHash(), []
    label_counts: dict[int, int] = {}
    n_captions = 0
    try:
        bar = tqdm(_iterate(ds, spec, workers), total=len(ds), unit="img", disable=not progress,
                   desc=f"prepare {spec.kind} {spec.resolution}px", file=sys.stderr)
        for i, arr, label, caps, source, reason in bar:
            if arr is None:
                if on_corrupt == "fail":
                    raise CorruptImage(source, reason)
                skipped.append((source, reason))
                bar.set_postfix(skipped=len(skipped))
                continue
            writer.add(arr, label, caps)
            digest.update(arr, label, caps)
            label_counts[label] = label_counts.get(label, 0) + 1
            n_captions += len(caps)
    except BaseException:
        writer.abort()
        raise
    report = default_report_path(out, fmt)
    if skipped:
        tmp = report.with_name(report.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(f"{src}\t{why}\n" for src, why in skipped))
        os.replace(tmp, report)
    if writer.count == 0:
        writer.abort()
        raise ConfigError(f"no readable image in {spec.kind} dataset at {spec.root!r} "
                          f"({len(skipped)} unreadable, see {report})")
    manifest = {
        "version": MANIFEST_VERSION,
        "format": fmt,
        "count": writer.count,
        "resolution": spec.resolution,
        "channels": int(ds.channels),
        "num_classes": int(ds.num_classes),
        "class_names": list(getattr(ds, "class_names", None) or []),
        "class_counts": {str(k): v for k, v in sorted(label_counts.items()) if k >= 0},
        "captions": n_captions,
        "content_hash": digest.hexdigest(),
        "skipped": len(skipped),
        "skipped_report": str(report) if skipped else None,
        "source": {"kind": spec.kind, "root": spec.root, "split": spec.split, "options": spec.options,
                   "max_items": spec.max_items},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    writer.close(manifest)
    return manifest
