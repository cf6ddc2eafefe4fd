"""Reference statistics in the ADM evaluator's npz format, read and written.

Keys (ADM): ``mu``, ``sigma`` (pool3), ``mu_s``, ``sigma_s`` (sFID), ``arr_0`` (uint8 NHWC images,
10k, for precision/recall). Keys we add (ignored by ADM's evaluator): ``extractor`` / ``extractor_id``
(what made the stats; absent in ADM files = the TF Inception), ``pool_arr_0`` (pool features of
``arr_0``, so P/R does not recompute them), ``mu_dinov2`` / ``sigma_dinov2`` / ``dinov2_id``,
``n`` (images behind the stats), ``meta`` (JSON), ``cmmd_emb`` / ``cmmd_id`` (CLIP image embeddings of
every reference image, fp16, for CMMD). As in ADM, stored stats are used whenever ``mu``
exists; otherwise they are computed from ``arr_0``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from bench.io import atomic_write
from bench.method import ConfigError
from bench.metrics.assets import sha256_file
from bench.metrics.running import RunningMoments
from bench.metrics.sources import NpzArrayStream, SampleBatch, npz_keys, to_nchw_uint8

PR_REFERENCE_IMAGES = 10_000


@dataclass
class Reference:
    path: Path | None
    sha256: str | None
    family: str                                   # extractor family the stats belong to
    extractor_id: str | None                      # None: ADM file (TF Inception, weights not recorded)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # pool / spatial / dinov2
    pool_arr_0: np.ndarray | None = None
    n: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    dinov2_id: str | None = None
    cmmd_emb: np.ndarray | None = None
    cmmd_id: str | None = None

    @property
    def format(self) -> str:
        return "adm" if self.extractor_id is None else "bench"

    def has_images(self) -> bool:
        return self.path is not None and "arr_0" in npz_keys(self.path)

    def image_batches(self, batch: int = 64, limit: int = PR_REFERENCE_IMAGES) -> Iterable[SampleBatch]:
        if not self.has_images():
            raise ConfigError(f"reference {self.path}: has no arr_0 images (needed for precision/recall, KID, "
                              "or stats of another extractor)")
        for arr in NpzArrayStream(self.path, "arr_0").batches(batch, stop=limit):
            yield SampleBatch(to_nchw_uint8(torch.from_numpy(arr.copy()), f"{self.path}: arr_0"))

    def describe(self) -> dict[str, Any]:
        return {"path": None if self.path is None else str(self.path), "sha256": self.sha256, "format": self.format,
                "extractor": self.family, "extractor_id": self.extractor_id, "n": self.n,
                "has_arr_0": self.has_images() if self.path else False, "dinov2_id": self.dinov2_id, **self.meta}


def _str(z, key: str) -> str | None:
    return str(z[key]) if key in z.files else None


def read_reference(path: str | Path, hash_file: bool = True) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference file {path} does not exist (make one with `bench stats <dataset> --out {path}`)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line
        raise ConfigError(f"reference file {path}: not a readable npz ({type(err).__name__}: {err})") from None
    with z:
        stats = {}
        for name, mk, sk in (("pool", "mu", "sigma"), ("spatial", "mu_s", "sigma_s"),
                             ("dinov2", "mu_dinov2", "sigma_dinov2")):
            if mk in z.files:
                if sk not in z.files:
                    raise ConfigError(f"reference file {path}: has {mk!r} but no {sk!r}")
                stats[name] = (z[mk].astype(np.float64), z[sk].astype(np.float64))
        if "arr_0" not in z.files and "mu" not in z.files:
            raise ConfigError(f"reference file {path}: expected 'mu'/'sigma' statistics or 'arr_0' images "
                              f"(found {', '.join(z.files)})")
        meta = json.loads(_str(z, "meta")) if "meta" in z.files else {}
        return Reference(path, sha256_file(path) if hash_file else None, _str(z, "extractor") or "inception",
                         _str(z, "extractor_id"), stats,
                         z["pool_arr_0"].astype(np.float32) if "pool_arr_0" in z.files else None,
                         int(z["n"]) if "n" in z.files else None, meta, _str(z, "dinov2_id"),
                         z["cmmd_emb"] if "cmmd_emb" in z.files else None, _str(z, "cmmd_id"))


def write_reference(path: str | Path, *, family: str, extractor_id: str, pool: RunningMoments,
                    spatial: RunningMoments | None = None, images: np.ndarray | None = None,
                    pool_images: np.ndarray | None = None, dinov2: RunningMoments | None = None,
                    dinov2_id: str | None = None, meta: dict[str, Any] | None = None,
                    cmmd_emb: np.ndarray | None = None, cmmd_id: str | None = None) -> Path:
    """Write stats (and optionally the P/R reference images) in ADM's layout plus our provenance keys."""
    arrays: dict[str, np.ndarray] = {}
    arrays["mu"], arrays["sigma"] = pool.stats()
    if spatial is not None:
        arrays["mu_s"], arrays["sigma_s"] = spatial.stats()
    if dinov2 is not None:
        arrays["mu_dinov2"], arrays["sigma_dinov2"] = dinov2.stats()
        arrays["dinov2_id"] = np.array(dinov2_id or "")
    if cmmd_emb is not None:
        arrays["cmmd_emb"] = np.asarray(cmmd_emb, dtype=np.float16)
        arrays["cmmd_id"] = np.array(cmmd_id or "")
    if images is not None:
        arrays["arr_0"] = np.ascontiguousarray(images, dtype=np.uint8)
    if pool_images is not None:
        arrays["pool_arr_0"] = np.asarray(pool_images, dtype=np.float32)
    arrays["extractor"] = np.array(family)
    arrays["extractor_id"] = np.array(extractor_id)
    arrays["n"] = np.array(pool.n)
    arrays["meta"] = np.array(json.dumps(meta or {}, default=str))
    return atomic_write(path, lambda f: np.savez(f, **arrays))
