"""Streaming evaluation: batches of uint8 images go through the extractors once; FID/sFID keep float64
running moments, IS keeps one 5000-sample chunk of logits, P/R and KID keep pool features only."""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bench.method import ConfigError
from bench.metrics.assets import AssetFolder
from bench.metrics.clip import ClipScorer, ClipSettings
from bench.metrics.cmmd import ClipImageEmbedder, CmmdSettings, cmmd
from bench.metrics.extractors import Extractor, build_extractor, column
from bench.metrics.frechet import frechet_distance
from bench.metrics.reference import PR_REFERENCE_IMAGES, Reference
from bench.metrics.running import FeatureBank, RunningInceptionScore, RunningMoments
from bench.metrics.setmetrics import kid, precision_recall
from bench.metrics.sources import SampleBatch

METRICS = ("fid", "sfid", "is", "pr", "kid", "clip", "fd_dinov2", "cmmd")
NEEDS_REFERENCE = {"fid", "sfid", "pr", "kid", "fd_dinov2", "cmmd"}


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    metrics: list[str] = Field(default_factory=lambda: ["fid", "sfid", "is", "pr"])
    extractor: str = Field("inception", description="inception | trained:<name>")
    batch: int = Field(64, gt=0)
    is_split_size: int = Field(5000, gt=0, description="ADM: sequential splits of 5000")
    pr_k: int = Field(3, gt=0)
    pr_reference_images: int = Field(PR_REFERENCE_IMAGES, gt=0)
    kid_subsets: int = Field(100, gt=0)
    kid_subset_size: int = Field(1000, gt=1)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    dinov2: str = Field("dinov2", description="extractor for fd_dinov2: dinov2[:<timm-name>]")
    cmmd: CmmdSettings = Field(default_factory=CmmdSettings)
    device: str = "auto"

    def checked(self) -> "EvalSettings":
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"field 'metrics': unknown {bad}; allowed: {', '.join(METRICS)}")
        return self


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StreamingEvaluator:
    def __init__(self, settings: EvalSettings, assets: AssetFolder, reference: Reference | None = None):
        self.settings = settings.checked()
        self.metrics = list(dict.fromkeys(settings.metrics))
        self.assets, self.reference = assets, reference
        self.device = resolve_device(settings.device)
        missing_ref = NEEDS_REFERENCE.intersection(self.metrics)
        if missing_ref and reference is None:
            raise ConfigError(f"metrics {sorted(missing_ref)} need a reference: pass --ref ref.npz")
        image_metrics = {"fid", "sfid", "is", "pr", "kid"}.intersection(self.metrics)
        self.extractor: Extractor | None = (build_extractor(settings.extractor, assets, self.device)
                                            if image_metrics else None)
        self.dino: Extractor | None = (build_extractor(settings.dinov2, assets, self.device)
                                       if "fd_dinov2" in self.metrics else None)
        self.clip = ClipScorer(settings.clip, assets, self.device) if "clip" in self.metrics else None
        self.cmmd_embedder = ClipImageEmbedder(settings.cmmd, assets, self.device) if "cmmd" in self.metrics else None
        self._cmmd: list[torch.Tensor] = []
        if reference is not None and self.extractor is not None:
            self._check_reference(reference, self.extractor)
        self.moments: dict[str, RunningMoments] = {}
        self.isc = RunningInceptionScore(settings.is_split_size) if "is" in self.metrics else None
        self.bank = FeatureBank() if {"pr", "kid"}.intersection(self.metrics) else None
        self.n = 0
        self.seconds = 0.0

    def _check_reference(self, ref: Reference, ex: Extractor) -> None:
        """Stored stats are used only when they come from this extractor family (and these weights, when
        the file records them); otherwise, as ADM does without ``mu``, they are computed from ``arr_0``."""
        self.stored_stats_usable = bool(ref.stats) and ref.family == ex.family and (
            ref.extractor_id is None or ref.extractor_id == ex.id)
        if ref.stats and not self.stored_stats_usable and not ref.has_images():
            raise ConfigError(f"reference {ref.path}: statistics were made with {ref.extractor_id or ref.family}, "
                              f"evaluating with {ex.id}, and the file has no arr_0 images to recompute them; "
                              f"make a matching one with `bench stats <dataset> --extractor {ex.family}`")

    def _moment(self, key: str, x: torch.Tensor) -> None:
        if key not in self.moments:
            self.moments[key] = RunningMoments(x.shape[1])
        self.moments[key].update(x)

    def update(self, batch: SampleBatch) -> None:
        t0 = time.perf_counter()
        images = batch.images
        if self.extractor is not None:
            feats = self.extractor(images)
            if "fid" in self.metrics:
                self._moment("pool", feats["pool"])
            if "sfid" in self.metrics:
                if "spatial" not in feats:
                    raise ConfigError(f"extractor {self.extractor.family} has no spatial features for sfid")
                self._moment("spatial", feats["spatial"])
            if self.isc is not None:
                self.isc.update(feats["logits"])
            if self.bank is not None:
                self.bank.update(feats["pool"])
        if self.dino is not None:
            self._moment("dinov2", self.dino(images)["pool"])
        if self.clip is not None:
            self.clip.update(images, batch.captions)
        if self.cmmd_embedder is not None:
            self._cmmd.append(self.cmmd_embedder(images))
        self.n += len(batch)
        self.seconds += time.perf_counter() - t0

    def run(self, batches: Iterable[SampleBatch], total: int | None = None, progress: bool = True,
            desc: str = "eval") -> dict[str, Any]:
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
            for b in batches:
                self.update(b)
                bar.update(len(b))
        return self.result()

    # ---- results ---------------------------------------------------------------------------
    def _reference_pool(self) -> torch.Tensor:
        ref, ex = self.reference, self.extractor
        assert ref is not None and ex is not None
        limit = self.settings.pr_reference_images
        if ref.pool_arr_0 is not None and ref.extractor_id == ex.id:
            return torch.from_numpy(ref.pool_arr_0[:limit])
        parts = [ex(b.images)["pool"].cpu() for b in ref.image_batches(self.settings.batch, limit)]
        return torch.cat(parts)

    def _reference_stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        ref = self.reference
        assert ref is not None
        stored_ok = key == "dinov2" and ref.dinov2_id in (None, getattr(self.dino, "id", None)) or \
            key != "dinov2" and getattr(self, "stored_stats_usable", False)
        if key in ref.stats and stored_ok:
            return ref.stats[key]
        # ADM semantics: no stored stats -> compute them from the file's arr_0 images
        ex = self.dino if key == "dinov2" else self.extractor
        m = RunningMoments(0)
        for b in ref.image_batches(self.settings.batch, limit=None):
            f = ex(b.images)[key if key != "dinov2" else "pool"]
            if m.n == 0:
                m = RunningMoments(f.shape[1])
            m.update(f)
        return m.stats()

    def _reference_cmmd(self) -> tuple[torch.Tensor, str]:
        """Reference CLIP embeddings: stored ones when made with these weights, else from arr_0."""
        ref, emb = self.reference, self.cmmd_embedder
        assert ref is not None and emb is not None
        if ref.cmmd_emb is not None and ref.cmmd_id == emb.id:
            return torch.from_numpy(ref.cmmd_emb.astype(np.float32)), "stored"
        parts = [emb(b.images) for b in ref.image_batches(self.settings.batch, limit=None)]
        return torch.cat(parts), "arr_0"

    def _fd(self, key: str) -> float:
        m = self.moments[key]
        return frechet_distance(*m.stats(), *self._reference_stats(key), factor1=m.factor())

    def result(self) -> dict[str, Any]:
        if self.n < 2:
            raise ConfigError(f"evaluation needs at least 2 samples, got {self.n}")
        fam = self.extractor.family if self.extractor is not None else None
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if "fid" in self.metrics:
            out[column("fid", fam)] = self._fd("pool")
        if "sfid" in self.metrics:
            out[column("sfid", fam)] = self._fd("spatial")
        if self.isc is not None:
            r = self.isc.result()
            out[column("is", fam)] = r["is"]
            extra["is"] = {"std_over_splits": r["is_std"], "splits": r["is_splits"],
                           "split_size": self.settings.is_split_size}
        if self.bank is not None:
            gen, ref = self.bank.features(), self._reference_pool()
            if "pr" in self.metrics:
                pr = precision_recall(gen, ref, self.settings.pr_k)
                out[column("precision", fam)], out[column("recall", fam)] = pr["precision"], pr["recall"]
                extra["pr"] = {"k": self.settings.pr_k, "n_generated": gen.shape[0], "n_reference": ref.shape[0]}
            if "kid" in self.metrics:
                k = kid(gen, ref, self.settings.kid_subsets, self.settings.kid_subset_size)
                out[column("kid", fam)] = k["kid"]
                extra["kid"] = {"std": k["kid_std"], "subset_size": k["kid_subset_size"], "subsets": k["kid_subsets"]}
        if self.dino is not None:
            out["fd_dinov2"] = self._fd("dinov2")
            extra["fd_dinov2"] = {"extractor_id": self.dino.id, "resize": "bicubic-antialias-224"}
        if self.clip is not None:
            r = self.clip.result()
            out["clip_score"] = r["clip_score"]
            extra["clip"] = r["clip_settings"] | {"n": r["clip_n"]}
        if self.cmmd_embedder is not None:
            ref_emb, source = self._reference_cmmd()
            c = self.settings.cmmd
            out["cmmd"] = cmmd(torch.cat(self._cmmd), ref_emb, c.sigma, c.scale)
            extra["cmmd"] = {**c.model_dump(), "weights": self.cmmd_embedder.id, "n_reference": int(ref_emb.shape[0]),
                             "reference_embeddings": source, "estimator": "biased (V-statistic, all pairs)"}
        ex = self.extractor
        return {
            "metrics": out,
            "details": extra,
            "extractor": None if ex is None else {"family": ex.family, "id": ex.id, "official": ex.official},
            "reference": None if self.reference is None else self.reference.describe(),
            "n_samples": self.n,
            "settings": self.settings.model_dump(),
            "seconds": round(self.seconds, 3),
            "versions": _versions(),
        }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "torch-fidelity", "open-clip-torch", "numpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def compute_reference_moments(batches: Iterable[SampleBatch], extractor: Extractor, keep: set[int] | None = None,
                              dino: Extractor | None = None, progress: bool = True, total: int | None = None,
                              cmmd_embedder: ClipImageEmbedder | None = None) -> dict[str, Any]:
    """One pass over a dataset stream: pool / spatial (/ dinov2) moments, plus the images and pool features
    of the positions in ``keep`` (the P/R reference subset)."""
    from tqdm import tqdm

    pool = spatial = dmom = None
    kept_images, kept_pool, clip_emb = [], [], []
    pos = 0
    with tqdm(total=total, desc="stats", unit="img", disable=not progress) as bar:
        for b in batches:
            f = extractor(b.images)
            pool = pool or RunningMoments(f["pool"].shape[1])
            pool.update(f["pool"])
            if "spatial" in f:
                spatial = spatial or RunningMoments(f["spatial"].shape[1])
                spatial.update(f["spatial"])
            if dino is not None:
                d = dino(b.images)["pool"]
                dmom = dmom or RunningMoments(d.shape[1])
                dmom.update(d)
            if cmmd_embedder is not None:
                clip_emb.append(cmmd_embedder(b.images).numpy())
            if keep is not None:
                sel = [i for i in range(len(b)) if pos + i in keep]
                if sel:
                    kept_images.append(b.images[sel].permute(0, 2, 3, 1).cpu().numpy())
                    kept_pool.append(f["pool"][sel].cpu().numpy())
            pos += len(b)
            bar.update(len(b))
    if pool is None:
        raise ConfigError("reference statistics of an empty dataset")
    return {"pool": pool, "spatial": spatial, "dinov2": dmom,
            "images": np.concatenate(kept_images) if kept_images else None,
            "pool_images": np.concatenate(kept_pool) if kept_pool else None,
            "cmmd_emb": np.concatenate(clip_emb) if clip_emb else None}
