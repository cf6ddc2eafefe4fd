"""Learning checks: does a method's training produce samples that look like the data?

Fixed real data: the demo's clip art (Debian openclipart-png, the 10 largest category folders) at 16 px.
The first 120 images of each class in the reader's hash order are the training set (the demo's 1,200
images); images 120..149 of each class (274 in all: one class has only 124) are held out.

Every score is computed against the training set as reference, for sets of the same size N (the
held-out count or less), so that the set-size bias of each statistic is the same for every row:
- ``fd``: Fréchet distance of ``trained:clipart10-16px`` pool features (a SmallCNN trained on the
  training images' labels; cached). Pixel-space FD would give the Gaussian baseline ~0.
- ``recall`` / ``precision`` (k-NN manifolds, k=3) and ``coverage`` (Naeem et al. 2020: share of
  reference images whose k-NN ball holds a sample) in the same features.
- ``agree``: share of class-conditional samples the extractor classifies as their label (chance 0.1).
- ``white``: share of near-white pixels (all channels >= 240); real clip art ≈ 0.5–0.6, noise ≈ 0.

Baselines in the same command (see learning-checks.md for why each is needed):
- ``gaussian``: per-pixel mean and full covariance of the training images (matches every second
  moment in pixel space);
- ``untrained``: the method's network at initialisation, sampled with the method's sampler;
- ``heldout``: held-out real images (the ceiling).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.method import ConfigError

RESOLUTION = 16
TRAIN_PER_CLASS = 120
ALL_PER_CLASS = 150
NUM_CLASSES = 10
EXTRACTOR = "trained:clipart10-16px"
WHITE_LEVEL = 240
PR_K = 3
DATA_VERSION = 1


def default_cache() -> Path:
    """$BENCH_CACHE/sanity, else ./results/sanity-cache (git-ignored)."""
    base = os.environ.get("BENCH_CACHE")
    return Path(base) / "sanity" if base else Path("results") / "sanity-cache"


# ---- data ----------------------------------------------------------------------------------------
@dataclass
class SanityData:
    train_zip: Path
    train: torch.Tensor          # uint8 NCHW
    train_labels: torch.Tensor
    heldout: torch.Tensor        # uint8 NCHW
    heldout_labels: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def ensure_data(cache: Path, root: str | None = None, log: Callable[[str], None] = print) -> SanityData:
    """Decode the clip art once into <cache>/data: a training zip (the trainer's format) and tensors."""
    from bench.data.archive import ZipDataset, ZipWriter
    from bench.data.prepare import prepare
    from bench.data.spec import DatasetSpec
    from bench.io import atomic_write

    folder = cache / "data"
    tensors = folder / f"clipart{RESOLUTION}-v{DATA_VERSION}.pt"
    train_zip = folder / f"clipart{RESOLUTION}-train.zip"
    if not (tensors.is_file() and train_zip.is_file()):
        t0 = time.perf_counter()
        spec = DatasetSpec(kind="clipart", root=root, resolution=RESOLUTION,
                           options={"max_classes": NUM_CLASSES, "max_per_class": ALL_PER_CLASS})
        all_zip = folder / f"clipart{RESOLUTION}-all.zip"
        if not all_zip.is_file():
            prepare(spec, all_zip, workers=2, progress=False, on_corrupt="fail")
        ds = ZipDataset(all_zip, RESOLUTION)
        items = [ds[i] for i in range(len(ds))]
        images = torch.stack([it["image"] for it in items])
        labels = torch.tensor([int(it["label"]) for it in items])
        # the reader lists each class's files in hash order: the first TRAIN_PER_CLASS are the demo's images
        rank = torch.zeros_like(labels)
        for k in labels.unique():
            idx = (labels == k).nonzero().flatten()
            rank[idx] = torch.arange(len(idx))
        is_train = rank < TRAIN_PER_CLASS
        writer = ZipWriter(train_zip)
        for i in is_train.nonzero().flatten().tolist():
            writer.add(images[i].permute(1, 2, 0).numpy(), int(labels[i]), [])
        writer.close({"count": int(is_train.sum()), "resolution": RESOLUTION, "num_classes": ds.num_classes,
                      "class_names": list(ds.class_names or []), "source": "bench.sanity"})
        blob = {"train": images[is_train], "train_labels": labels[is_train], "heldout": images[~is_train],
                "heldout_labels": labels[~is_train], "class_names": list(ds.class_names or [])}
        atomic_write(tensors, lambda f: torch.save(blob, f))
        log(f"sanity data: {int(is_train.sum())} training + {int((~is_train).sum())} held-out images at "
            f"{RESOLUTION} px -> {folder} ({time.perf_counter() - t0:.0f}s)")
    blob = torch.load(tensors, weights_only=True)
    return SanityData(train_zip, blob["train"], blob["train_labels"], blob["heldout"], blob["heldout_labels"],
                      list(blob["class_names"]))


def ensure_extractor(cache: Path, data: SanityData, log: Callable[[str], None] = print):
    """The ``trained:clipart10-16px`` SmallCNN, trained once on the training images' labels."""
    from bench.data.archive import ZipDataset
    from bench.metrics.assets import AssetError, AssetFolder
    from bench.metrics.extractors import build_extractor
    from bench.metrics.trained import train_extractor

    assets = AssetFolder(cache / "assets")
    try:
        return build_extractor(EXTRACTOR, assets, "cpu")
    except AssetError:
        t0 = time.perf_counter()
        entry = train_extractor(ZipDataset(data.train_zip, RESOLUTION), EXTRACTOR.split(":", 1)[1], assets,
                                epochs=15, input_size=32, source="bench.sanity training images", progress=False)
        log(f"trained {EXTRACTOR} (held-out accuracy {entry['val_accuracy']:.3f}, "
            f"{time.perf_counter() - t0:.0f}s)")
        return build_extractor(EXTRACTOR, assets, "cpu")


# ---- scores --------------------------------------------------------------------------------------
def to_uint8_nchw(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def white_share(images: torch.Tensor) -> float:
    """Share of pixels whose every channel is >= WHITE_LEVEL (uint8 NCHW)."""
    return float((images >= WHITE_LEVEL).all(dim=1).float().mean())


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values          # +1: the point itself is at distance 0


def coverage(reference: torch.Tensor, generated: torch.Tensor, k: int = PR_K) -> float:
    """Naeem et al. 2020: share of reference points whose k-NN ball contains at least one generated point."""
    radii = _knn_radii(reference, k)
    nearest = torch.cdist(reference, generated).min(dim=1).values
    return float((nearest < radii).float().mean())


class Scorer:
    """Scores uint8 image sets against the training set in the trained extractor's features."""

    def __init__(self, data: SanityData, extractor):
        from bench.metrics.running import RunningMoments

        self.data, self.extractor = data, extractor
        feats = self._features(data.train)
        self.ref_pool = feats["pool"]
        m = RunningMoments(self.ref_pool.shape[1])
        m.update(self.ref_pool)
        self.ref_stats = m.stats()
        self.n = int(data.heldout.shape[0])

    def _features(self, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {"pool": [], "logits": []}
        for lo in range(0, images.shape[0], batch):
            f = self.extractor(images[lo:lo + batch])
            out["pool"].append(f["pool"].cpu())
            out["logits"].append(f["logits"].cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        from bench.metrics.frechet import frechet_distance
        from bench.metrics.running import RunningMoments
        from bench.metrics.setmetrics import precision_recall

        feats = self._features(images)
        m = RunningMoments(feats["pool"].shape[1])
        m.update(feats["pool"])
        out = {"fd": float(frechet_distance(*m.stats(), *self.ref_stats, factor1=m.factor()))}
        pr = precision_recall(feats["pool"], self.ref_pool, PR_K)
        out.update(precision=pr["precision"], recall=pr["recall"], coverage=coverage(self.ref_pool, feats["pool"]))
        if labels is not None:
            out["agree"] = float((feats["logits"].argmax(1) == labels.cpu()).float().mean())
        out["white"] = white_share(images)
        return out


def gaussian_baseline(data: SanityData, n: int, seed: int = 0) -> torch.Tensor:
    """Samples of N(per-pixel mean, full pixel covariance) of the training images, as uint8 NCHW."""
    from bench.baselines import gaussian_samples
    return gaussian_samples(data.train, n, seed)


# ---- training and sampling -----------------------------------------------------------------------
def run_config(data: SanityData, method: str, preset: str, images: int | None = None,
               flops: float | None = None, seed: int = 0, method_config: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None):
    """The RunConfig of one sanity run: the method's preset (+ its train_defaults) on the training zip,
    budget in images or FLOPs (FLOPs split over stages by their shares, as suites do)."""
    from bench.config import RunConfig, deep_merge
    from bench.method import get_method_class, validate_model

    cls = get_method_class(method)
    if preset not in cls.presets:
        raise ConfigError(f"sanity: method {method!r} has no preset {preset!r}; presets: {', '.join(cls.presets)}")
    tr = deep_merge(dict(cls.train_defaults.get(preset, {})), dict(train or {}))
    tr.update(progress=False, keep_checkpoints=10)
    raw = {"method": method, "preset": preset, "method_config": dict(method_config or {}),
           "data": {"kind": "zip", "root": str(data.train_zip.resolve()), "resolution": RESOLUTION},
           "seed": seed, "train": tr}
    cfg = validate_model(RunConfig, raw)
    if flops is not None:
        from bench.compute import FlopCache, split_budget
        stages = FlopCache(cache_flops()).stages(method, preset, cfg.method_config)
        plan = split_budget(float(flops), stages, cfg.train.batch, label=f"sanity {method}")
        cfg.stage_images = [s.images for s in plan.stages]
        cfg.train.images = plan.images
    elif images is not None:
        cfg.train.images = int(images)
    return cfg


def run_dir_for(cache: Path, cfg) -> Path:
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, default=str)
    return cache / "runs" / f"{cfg.method}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def train_cached(cache: Path, cfg, stop_after_images: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or find finished) the run of ``cfg``; returns its folder and summary."""
    from bench.train import train

    run_dir = run_dir_for(cache, cfg)
    summary_path = run_dir / "train_summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("done") or (stop_after_images is not None and summary.get("images", 0) >= stop_after_images):
            return run_dir, summary
    return run_dir, train(cfg, run_dir, stop_after_images=stop_after_images)


def sample_method(method, n: int, seed_start: int = 0, steps: int | None = None, batch: int = 128
                  ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """n samples (uint8 NCHW), their labels (class-conditional methods) and the NFE per image."""
    from bench.sample import iter_samples

    imgs, labs, nfe = [], [], 0
    for _, x, lab, nfe in iter_samples(None, list(range(seed_start, seed_start + n)), batch, steps, method=method):
        imgs.append(x.permute(0, 3, 1, 2))
        if lab is not None:
            labs.append(lab)
    return torch.cat(imgs), (torch.cat(labs) if labs else None), nfe


def untrained_method(cfg):
    from bench.baselines import untrained_method as build
    return build(cfg)


def save_grid_png(path: Path, images: torch.Tensor, scale: int = 4, max_images: int = 64) -> Path:
    """A grid of uint8 NCHW images, enlarged (nearest) so 16-px samples can be looked at."""
    from bench.sample import save_grid

    x = images[:max_images]
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return save_grid(path, x.permute(0, 2, 3, 1).numpy(), max_images)


def cache_flops() -> Path:
    return default_cache() / "flops.json"


# ---- the per-method check ------------------------------------------------------------------------
PRESET = "cpu-demo"
BUDGET_FLOPS = 1.1e13          # per method: ≈ 24k EDM training images at 16 px (≈ 2 min on 2 quiet cores)
SEED = 0                       # training seed; sample seeds are 0..N-1 (labels from the seeds)
BASELINE_SEED = 12345          # Gaussian baseline draws
# PASS rule, fixed before the methods were run (see README "Learning evidence"):
FD_RATIO = 0.5                 # fd <= FD_RATIO * the better baseline's fd
RECALL_MARGIN = 0.10           # recall >= the better baseline's recall + RECALL_MARGIN


@dataclass
class Row:
    name: str
    scores: dict[str, float]
    nfe: int | None = None
    note: str = ""


@dataclass
class MethodCheck:
    method: str
    trained: Row
    untrained: Row
    gaussian: Row
    heldout: Row
    seconds: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None

    def failures(self) -> list[str]:
        best_fd = min(self.gaussian.scores["fd"], self.untrained.scores["fd"])
        best_recall = max(self.gaussian.scores["recall"], self.untrained.scores["recall"])
        s, out = self.trained.scores, []
        if not s["fd"] <= FD_RATIO * best_fd:
            out.append(f"fd {s['fd']:.1f} > {FD_RATIO:g} x best baseline {best_fd:.1f}")
        if not s["recall"] >= best_recall + RECALL_MARGIN:
            out.append(f"recall {s['recall']:.3f} < best baseline {best_recall:.3f} + {RECALL_MARGIN:g}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()


class Context:
    """Cached data, extractor and reference features shared by every check of one command."""

    def __init__(self, cache: Path | None = None, log: Callable[[str], None] = print):
        self.cache = Path(cache) if cache else default_cache()
        self.log = log
        self.data = ensure_data(self.cache, log=log)
        self.scorer = Scorer(self.data, ensure_extractor(self.cache, self.data, log=log))
        self.n = self.scorer.n
        self.flops = BUDGET_FLOPS
        self._gauss: Row | None = None
        self._heldout: Row | None = None

    def gaussian(self) -> Row:
        if self._gauss is None:
            from bench.sample import labels_for_seeds
            labels = labels_for_seeds(range(self.n), self.data.num_classes)   # ignored by it: agreement ≈ chance
            self._gauss = Row("gaussian", self.scorer.score(gaussian_baseline(self.data, self.n, BASELINE_SEED),
                                                            labels))
        return self._gauss

    def heldout(self) -> Row:
        if self._heldout is None:
            self._heldout = Row("heldout", self.scorer.score(self.data.heldout, self.data.heldout_labels))
        return self._heldout

    def config(self, method: str, flops: float | None = None, preset: str = PRESET, **kw: Any):
        cfg = run_config(self.data, method, preset, flops=flops or self.flops, seed=SEED, **kw)
        # checkpoints at 1/3 and 2/3 of the run (and its end) are kept: the monotonicity claim reads them
        third = max(1, round(cfg.train.images / 3 / cfg.train.batch)) * cfg.train.batch
        cfg.train.checkpoint_images = third
        return cfg

    def train(self, cfg, stop_after_images: int | None = None) -> Path:
        t0 = time.perf_counter()
        run_dir, summary = train_cached(self.cache, cfg, stop_after_images)
        if not (summary.get("done") or stop_after_images):
            raise RuntimeError(f"sanity: training {cfg.method} stopped early ({summary})")
        self.log(f"  {cfg.method}: trained {summary.get('images')} images ({summary.get('flops', 0):.3g} FLOPs) "
                 f"in {run_dir} ({time.perf_counter() - t0:.0f}s)")
        return run_dir

    def score_method(self, name: str, method, steps: int | None = None) -> Row:
        x, labels, nfe = sample_method(method, self.n, steps=steps)
        return Row(name, self.scorer.score(x, labels), nfe)


def distance_overrides(ctx: Context, method: str, metric: str | None) -> dict[str, Any]:
    """method_config overrides for a consistency model's training distance (``--metric``): ``lpips`` uses
    randomly initialised LPIPS weights staged in the cache (no download), fed at the images' own size."""
    if metric is None:
        return {}
    from bench.method import get_method_class
    if "metric" not in get_method_class(method).Config.model_fields:
        raise ConfigError(f"sanity: --metric applies to methods with a training distance (cd, ct, ict), not {method!r}")
    if metric != "lpips":
        return {"metric": metric}
    from bench.consistency.perceptual import random_lpips_overrides
    return random_lpips_overrides((ctx.cache / "lpips-random").resolve(), seed=0, resize=0)


def check_method(ctx: Context, method: str, flops: float = BUDGET_FLOPS, grids: Path | None = None,
                 metric: str | None = None) -> MethodCheck:
    """Train ``method``'s cpu-demo preset for ``flops``, score it beside its baselines."""
    from bench.sample import load_run

    times: dict[str, float] = {}
    cfg = ctx.config(method, flops, method_config=distance_overrides(ctx, method, metric))
    t0 = time.perf_counter()
    run_dir = ctx.train(cfg)
    times["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained, _ = load_run(run_dir)
    x, labels, nfe = sample_method(trained, ctx.n)
    row = Row("trained", ctx.scorer.score(x, labels), nfe)
    untrained = untrained_method(cfg)
    xu, lu, nfe_u = sample_method(untrained, ctx.n)
    row_u = Row("untrained", ctx.scorer.score(xu, lu), nfe_u)
    times["sample+score"] = time.perf_counter() - t0
    if grids is not None:
        save_grid_png(grids / f"{method}.png", x)
        save_grid_png(grids / f"{method}-untrained.png", xu)
    return MethodCheck(method, row, row_u, ctx.gaussian(), ctx.heldout(), times, run_dir)


COLUMNS = ("fd", "recall", "coverage", "precision", "agree", "white")


def format_check(c: MethodCheck) -> str:
    def cell(r: Row) -> str:
        return " ".join(f"{k}={r.scores[k]:.3g}" for k in ("fd", "recall", "coverage", "agree", "white")
                        if k in r.scores)
    verdict = "PASS" if c.passed else "FAIL (" + "; ".join(c.failures()) + ")"
    return (f"{c.method:<8} {verdict}\n    trained   {cell(c.trained)} nfe={c.trained.nfe}\n"
            f"    untrained {cell(c.untrained)}\n    gaussian  {cell(c.gaussian)}\n    heldout   {cell(c.heldout)}")


def table_markdown(checks: list[MethodCheck]) -> str:
    """One row per method (trained scores) plus the baselines, for the README."""
    head = "| row | " + " | ".join(COLUMNS) + " | verdict |\n|" + "---|" * (len(COLUMNS) + 2) + "\n"
    lines = []
    fmt = lambda r: " | ".join(f"{r.scores[k]:.3g}" if k in r.scores else "-" for k in COLUMNS)  # noqa: E731
    for c in checks:
        lines.append(f"| {c.method} | {fmt(c.trained)} | {'PASS' if c.passed else 'FAIL'} |")
        lines.append(f"| {c.method} untrained | {fmt(c.untrained)} | baseline |")
    if checks:
        lines.append(f"| gaussian | {fmt(checks[0].gaussian)} | baseline |")
        lines.append(f"| held-out real | {fmt(checks[0].heldout)} | ceiling |")
    return head + "\n".join(lines) + "\n"


# ---- the papers' claims --------------------------------------------------------------------------
# Each claim compares fd (lower is better) between two sample sets drawn with the same seeds 0..N-1
# from runs of the per-method check (same cache: `bench sanity all` first makes --claims cheap).
CLAIM_RATIO = 0.9              # "A beats B": fd_A <= CLAIM_RATIO * fd_B (a 10 % margin over set noise)


@dataclass
class Claim:
    name: str
    text: str
    rows: list[Row]
    passed: bool
    rule: str


def _fd(r: Row) -> float:
    return r.scores["fd"]


def _beats(a: Row, b: Row) -> bool:
    return _fd(a) <= CLAIM_RATIO * _fd(b)


def claim_cd_vs_teacher(ctx: Context) -> Claim:
    """(i) CD's 1-step samples beat its EDM teacher's 1-step Euler samples (Song et al. 2023, Table 1 / Fig. 3)."""
    from bench.diffusion.edm import edm_sampler, karras_sigmas
    from bench.sample import load_run

    method, _ = load_run(ctx.train(ctx.config("cd")))
    cd1 = ctx.score_method("cd 1-step", method, steps=1)
    cfg = method.config

    class TeacherEuler:                        # the teacher as a sampler: Euler on the EDM grid, 1 step
        def __init__(self):
            self.config, self.device = cfg, method.device

        def sample(self, rng, cond=None, steps=None, guidance=1.0):
            labels = None if cond is None else cond.labels
            noise = rng.randn((len(rng), cfg.channels, cfg.resolution, cfg.resolution))
            sig = karras_sigmas(1, cfg.sigma_min, cfg.sigma_max, cfg.rho)          # [σ_max, 0]
            x, nfe = edm_sampler(lambda x, s: method.teacher(x, s, labels), noise, sig, solver="euler")
            return x.float().clamp(-1, 1), nfe
    teacher1 = ctx.score_method("teacher Euler 1-step", TeacherEuler())
    return Claim("cd-vs-teacher", "CD 1-step beats its EDM teacher's 1-step Euler", [cd1, teacher1],
                 _beats(cd1, teacher1), f"fd(cd 1-step) <= {CLAIM_RATIO:g} x fd(teacher Euler 1-step)")


def claim_ict_steps(ctx: Context) -> Claim:
    """(ii) iCT 2-step beats iCT 1-step (Song & Dhariwal 2024, Table 2/3: 2-step FID below 1-step)."""
    from bench.sample import load_run

    method, _ = load_run(ctx.train(ctx.config("ict")))
    one, two = ctx.score_method("ict 1-step", method, steps=1), ctx.score_method("ict 2-step", method, steps=2)
    return Claim("ict-2-vs-1", "iCT 2-step beats iCT 1-step", [two, one], _beats(two, one),
                 f"fd(2-step) <= {CLAIM_RATIO:g} x fd(1-step)")


def claim_edm_monotone(ctx: Context) -> Claim:
    """(iii) EDM's score improves over three checkpoints of one run (1/3, 2/3, 3/3 of the budget)."""
    from bench.checkpoint import CheckpointStore
    from bench.sample import load_run

    cfg = ctx.config("edm")
    run_dir = ctx.train(cfg)
    third = cfg.train.checkpoint_images
    marks = [third, 2 * third]
    found = dict(CheckpointStore(run_dir / "ckpt").list())
    marks.append(max(found))
    rows = []
    for mark in marks:
        path = found.get(mark)
        if path is None:
            raise RuntimeError(f"sanity: no checkpoint at {mark} images in {run_dir / 'ckpt'} (have {sorted(found)})")
        method, _ = load_run(run_dir, checkpoint=path)
        rows.append(ctx.score_method(f"edm @ {mark} images", method))
    ok = _beats(rows[1], rows[0]) and _beats(rows[2], rows[1])
    return Claim("edm-monotone", "EDM improves monotonically over three checkpoints", rows, ok,
                 f"fd(c2) <= {CLAIM_RATIO:g} x fd(c1) and fd(c3) <= {CLAIM_RATIO:g} x fd(c2)")


def claim_relay_stage2(ctx: Context) -> Claim:
    """(iv) Relay's stage 2 improves on its upsampled stage-1 sample (same base samples)."""
    from bench.sample import load_run

    method, _ = load_run(ctx.train(ctx.config("relay")))
    full = ctx.score_method("relay stage 2", method)

    class BaseOnly:                            # stage 1 only, nearest-upsampled: what stage 2 starts from
        def __init__(self):
            self.config, self.device = method.config, method.device

        def sample(self, rng, cond=None, steps=None, guidance=1.0):
            from bench.method import Condition
            n1, _ = method._steps(steps)
            x_low, nfe = method.sample_base(rng, cond or Condition(), n1)
            return method.postprocess(method.upsample(x_low.float().clamp(-1, 1))), nfe
    base = ctx.score_method("relay upsampled base", BaseOnly())
    return Claim("relay-stage2", "relay stage 2 improves on its upsampled base sample", [full, base],
                 _beats(full, base), f"fd(stage 2) <= {CLAIM_RATIO:g} x fd(upsampled base)")


CLAIMS: dict[str, Callable[[Context], Claim]] = {
    "cd-vs-teacher": claim_cd_vs_teacher, "ict-2-vs-1": claim_ict_steps, "edm-monotone": claim_edm_monotone,
    "relay-stage2": claim_relay_stage2,
}


def format_claim(c: Claim) -> str:
    rows = "; ".join(f"{r.name}: fd={_fd(r):.3g} recall={r.scores['recall']:.3g}" for r in c.rows)
    return f"{c.name:<14} {'PASS' if c.passed else 'FAIL'}  {c.text} [{c.rule}]\n    {rows}"


def claims_markdown(claims: list[Claim]) -> str:
    head = "| claim | rule | rows (fd, recall) | verdict |\n|---|---|---|---|\n"
    return head + "\n".join(
        f"| {c.text} | {c.rule} | " + "; ".join(f"{r.name}: {_fd(r):.3g}, {r.scores['recall']:.3g}" for r in c.rows)
        + f" | {'PASS' if c.passed else 'FAIL'} |" for c in claims) + "\n"
