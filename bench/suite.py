"""Suite schema (YAML in suites/) and its expansion into cells.

A suite names datasets, methods (with presets and overrides), sweeps, seeds, one compute budget,
sampling settings, metrics and the executor. ``expand_suite`` turns it into cells: one per
(method entry × dataset × sweep point × seed). A cell's id is a hash of its resolved config, so the
same suite re-run finds the same run folders (finished cells are skipped, unfinished ones resume).

Resolution order of a cell's RunConfig (later wins): TrainConfig defaults < the method's
``train_defaults[preset]`` < suite ``train`` < method entry ``train`` < sweep values.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.config import RunConfig, deep_merge, parse_overrides, read_yaml_mapping, set_dotted
from bench.method import ConfigError, get_method_class, load_all, resolve_method_config, validate_model

# train.* fields that change how a run is executed, not what it computes: not part of the cell id.
EXECUTION_ONLY = ("progress", "workers", "device", "loggers", "preview_images", "preview_grid", "preview_steps",
                  "bucket_mb")   # how a run executes, not what it trains: toggling them keeps the cell id
EXECUTORS = ("local", "slurm")
BASELINES = ("gaussian", "untrained")    # rows a method must beat (built and evaluated by bench.baselines)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DatasetEntry(Strict):
    """A DatasetSpec plus where its reference statistics come from."""

    kind: str
    root: str | None = None
    resolution: int = Field(32, gt=0)
    split: str = "train"
    max_items: int | None = Field(None, gt=0)
    on_corrupt: str = "fail"
    options: dict[str, Any] = Field(default_factory=dict)
    text: dict[str, Any] | None = Field(None, description="caption encoder (bench.data.spec.TextSpec fields)")
    reference: str | None = Field(None, description="reference statistics npz (ADM format); 'auto' = built "
                                                    "from this dataset (training the suite's `trained:` "
                                                    "extractor first if it is not staged); None = no reference")
    prepare: bool = Field(False, description="convert once into the zip training format under "
                                             "<suite dir>/data/ and train from that (fast decoding)")

    def spec(self, prepared_zip: Path | None = None) -> dict[str, Any]:
        if self.prepare and prepared_zip is not None:
            return {"kind": "zip", "root": str(prepared_zip), "resolution": self.resolution}
        return self.model_dump(exclude={"reference", "prepare"})


def prepared_path(suite: "Suite", name: str) -> Path:
    ds = suite.datasets[name]
    return suite_dir(suite) / "data" / f"{name}-{ds.resolution}px.zip"


class MethodEntry(Strict):
    method: str = Field(..., description="registered method name, or 'all' for every registered method")
    preset: str | None = None
    label: str | None = Field(None, description="name shown in tables (default: the method name)")
    method_config: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(default_factory=dict, description="per-method sampling overrides")
    datasets: list[str] | None = Field(None, description="restrict to these datasets (default: all)")
    if_missing_preset: str = Field("error", pattern="^(error|skip)$",
                                   description="with method 'all': a method lacking the preset is an error, or "
                                               "skipped (and listed by the dry run)")


class Budget(Strict):
    """Training budget per cell: FLOPs, GPU-hours at a stated throughput, or fixed images (unmatched)."""

    flops: float | None = Field(None, gt=0, description="training FLOPs per cell (a multiply-add = 2 FLOPs)")
    gpu_hours: float | None = Field(None, gt=0)
    throughput_flops: float | None = Field(None, gt=0, description="sustained FLOP/s per GPU (with gpu_hours)")
    images: int | None = Field(None, gt=0, description="fixed training images per cell: NOT compute-matched")
    tolerance: float = Field(0.02, gt=0, description="relative spend deviation flagged as unmatched")

    @model_validator(mode="after")
    def _one_kind(self) -> "Budget":
        kinds = [self.flops is not None, self.gpu_hours is not None, self.images is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of flops, gpu_hours (+ throughput_flops), images")
        if self.gpu_hours is not None and self.throughput_flops is None:
            raise ValueError("gpu_hours needs throughput_flops (sustained FLOP/s per GPU)")
        return self

    def total_flops(self) -> float | None:
        if self.flops is not None:
            return float(self.flops)
        if self.gpu_hours is not None:
            return float(self.gpu_hours) * 3600.0 * float(self.throughput_flops)
        return None


class Sampling(Strict):
    n: int = Field(1000, gt=0, description="images generated per (steps, guidance) setting")
    steps: list[int | None] = Field(default_factory=lambda: [None], description="sampler steps; null = default")
    guidance: list[float] = Field(default_factory=lambda: [1.0], description="CFG scales (1.0 = none)")
    batch: int = Field(64, gt=0)
    shards: int = Field(1, gt=0, description="sampling jobs per cell (a job array on SLURM)")
    seed_start: int = Field(0, ge=0, description="image seeds are seed_start .. seed_start + n - 1")


class Sweep(Strict):
    """grid: cartesian product; zip: lists walked together. Keys are dotted cell fields."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Sweep":
        for kind, d in (("grid", self.grid), ("zip", self.zip)):
            for k, v in d.items():
                if not v:
                    raise ValueError(f"sweep.{kind}.{k} is empty")
        lengths = {k: len(v) for k, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"sweep.zip lists differ in length: {lengths}")
        both = set(self.grid) & set(self.zip)
        if both:
            raise ValueError(f"sweep keys in both grid and zip: {sorted(both)}")
        return self

    def points(self) -> list[dict[str, Any]]:
        zipped = [dict(zip(self.zip, vals)) for vals in zip(*self.zip.values())] if self.zip else [{}]
        grid = [dict(zip(self.grid, vals)) for vals in itertools.product(*self.grid.values())] if self.grid \
            else [{}]
        return [{**g, **z} for g in grid for z in zipped]


class EvalEvery(Strict):
    """Intermediate evaluation points: every ``images`` training images, or every ``flops`` training FLOPs
    (converted to images with the planned per-image cost of each stage). The final checkpoint is always
    evaluated; points at or past the end of training are dropped."""

    images: int | None = Field(None, gt=0)
    flops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> "EvalEvery":
        if (self.images is None) == (self.flops is None):
            raise ValueError("give exactly one of images, flops")
        return self


class Suite(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    output: str = Field("results", description="root folder; run folders are <output>/<name>/<cell-id>/")
    datasets: dict[str, DatasetEntry]
    methods: list[MethodEntry]
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for every cell")
    seeds: list[int] = Field(default_factory=lambda: [0])
    budget: Budget
    sampling: Sampling = Field(default_factory=Sampling)
    metrics: list[str] = Field(default_factory=lambda: ["fid"])
    metrics_options: dict[str, Any] = Field(default_factory=dict, description="passed to the evaluator")
    sweep: Sweep = Field(default_factory=Sweep)
    executor: str = Field("local", pattern="^(local|slurm)$")
    cluster: str | None = Field(None, description="slurm profile: a name in slurm/ or a path to a yaml file")
    published: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                   description="label -> metric -> paper's number")
    baselines: list[str] = Field(default_factory=list,
                                 description="rows a method must beat, evaluated like the cells (bench.baselines): "
                                             "gaussian (pixel mean + full covariance), untrained (each cell's "
                                             "network at initialisation, sampled the same way)")
    eval_every: EvalEvery | None = Field(None, description="intermediate evaluations (FID-vs-compute curves)")
    targets: dict[str, float] = Field(default_factory=dict, description="metric -> target for the report's "
                                                                        "compute_to_target (default fid: the "
                                                                        "worst final FID of the suite)")
    baseline: str | None = Field(None, description="label (or method) the report's compute_ratio refers "
                                                        "to (default edm); not `baselines`")

    @model_validator(mode="after")
    def _check(self) -> "Suite":
        if not self.datasets:
            raise ValueError("needs at least one dataset")
        if not self.methods:
            raise ValueError("needs at least one method")
        if not self.seeds:
            raise ValueError("needs at least one seed")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines: unknown {bad}; allowed: {', '.join(BASELINES)}")
        return self


@dataclass
class Cell:
    """One unit of work: train one config, then sample and evaluate every sampling setting."""

    id: str
    label: str
    method: str
    preset: str | None
    dataset: str
    seed: int
    run: dict[str, Any]                      # RunConfig as a dict (stage_images filled in by planning)
    budget: dict[str, Any]
    sampling: dict[str, Any]
    metrics: list[str]
    metrics_options: dict[str, Any]
    reference: str | None
    sweep: dict[str, Any] = field(default_factory=dict)
    eval_every: dict[str, Any] | None = None   # not in the id: evaluating more points never changes training

    def run_config(self) -> RunConfig:
        return validate_model(RunConfig, self.run)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ---- loading -----------------------------------------------------------------------------------
def load_suite(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Suite:
    p = Path(path)
    raw = read_yaml_mapping(p, "suite file")
    raw.setdefault("name", p.stem)
    if overrides:
        raw = deep_merge(raw, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    try:
        return validate_model(Suite, raw, prefix="")  # type: ignore[return-value]
    except ConfigError as err:
        raise ConfigError(f"suite {str(p)!r}: {err}") from None


def suite_dir(suite: Suite, base: Path | None = None) -> Path:
    out = Path(suite.output)
    if not out.is_absolute() and base is not None:
        out = base / out
    return out / suite.name


# ---- expansion ---------------------------------------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_hash(run: dict[str, Any], budget: dict[str, Any], sampling: dict[str, Any], metrics: list[str],
              metrics_options: dict[str, Any], reference: str | None) -> str:
    run = json.loads(_canonical(run))
    run.pop("stage_images", None)                  # derived from the budget, not an input
    for k in EXECUTION_ONLY:
        run.get("train", {}).pop(k, None)
    key = {"run": run, "budget": budget, "sampling": sampling, "metrics": sorted(metrics),
           "metrics_options": metrics_options, "reference": reference}
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:10]


def _method_names(entry: MethodEntry, registry: dict[str, Any]) -> list[str]:
    if entry.method == "all":       # generators only: decoders (e.g. cdec) need an input to reconstruct
        return sorted(n for n, cls in registry.items() if getattr(cls, "generative", True))
    get_method_class(entry.method)                 # one-line error for an unknown name
    return [entry.method]


def _validate_method_config(name: str, preset: str | None, overrides: dict[str, Any], where: str) -> Any:
    try:
        return resolve_method_config(name, preset, overrides, prefix="method_config.")
    except ConfigError as err:
        raise ConfigError(f"{where} ({name}): {err}") from None


SWEEP_ROOTS = ("budget", "sampling")


def expand_suite(suite: Suite, skipped: list[str] | None = None) -> list[Cell]:
    """All cells of the suite, validated (one clear line for the first problem found).

    ``skipped`` collects the (method, preset) pairs left out by ``if_missing_preset: skip``."""
    registry = load_all()
    points = suite.sweep.points()
    for key in {k for p in points for k in p}:
        root = key.split(".")[0]
        if root not in RunConfig.model_fields and root not in SWEEP_ROOTS:
            raise ConfigError(f"sweep key {key!r}: {root!r} is not a cell field; allowed roots: "
                              f"{', '.join([*RunConfig.model_fields, *SWEEP_ROOTS])}")
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for mi, entry in enumerate(suite.methods):
        for ds_name in entry.datasets or list(suite.datasets):
            if ds_name not in suite.datasets:
                raise ConfigError(f"methods[{mi}].datasets: unknown dataset {ds_name!r}; "
                                  f"suite datasets: {', '.join(suite.datasets)}")
            ds = suite.datasets[ds_name]
            for name in _method_names(entry, registry):
                cls = registry[name]
                preset = entry.preset
                if entry.method == "all" and preset is not None and preset not in cls.presets:
                    if entry.if_missing_preset == "skip":
                        if skipped is not None:
                            skipped.append(f"methods[{mi}]: {name} has no preset {preset!r} (skipped)")
                        continue
                    raise ConfigError(f"methods[{mi}]: method {name!r} (from 'all') has no preset {preset!r}; "
                                      f"presets: {', '.join(cls.presets)}")
                train_defaults = getattr(cls, "train_defaults", {}).get(preset or "", {})
                for point in points:
                    for seed in suite.seeds:
                        cells.append(_make_cell(suite, mi, entry, name, preset, ds_name, ds, train_defaults,
                                                point, seed))
                        prev = seen.get(cells[-1].id)
                        if prev is not None:
                            raise ConfigError(f"two cells resolve to the same config ({prev} and methods[{mi}] "
                                              f"{name}); remove the duplicate entry")
                        seen[cells[-1].id] = f"methods[{mi}] {name}"
    return cells


def _make_cell(suite: Suite, mi: int, entry: MethodEntry, name: str, preset: str | None, ds_name: str,
               ds: DatasetEntry, train_defaults: dict[str, Any], point: dict[str, Any], seed: int) -> Cell:
    where = f"methods[{mi}]"
    run: dict[str, Any] = {
        "method": name, "preset": preset, "method_config": dict(entry.method_config),
        "data": ds.spec(prepared_path(suite, ds_name)), "seed": seed,
        "train": deep_merge(deep_merge(dict(train_defaults), suite.train), entry.train),
    }
    budget = suite.budget.model_dump(exclude_none=True)
    sampling = deep_merge(suite.sampling.model_dump(), entry.sampling)
    extra = {"budget": budget, "sampling": sampling}
    for key, value in point.items():
        root = key.split(".")[0]
        target = extra if root in SWEEP_ROOTS else run
        set_dotted(target, key, value)
    try:
        budget = validate_model(Budget, extra["budget"], prefix="budget.").model_dump(exclude_none=True)
        sampling = validate_model(Sampling, extra["sampling"], prefix="sampling.").model_dump()
        cfg = validate_model(RunConfig, run)
    except ConfigError as err:
        raise ConfigError(f"{where} ({name}, dataset {ds_name}): {err}") from None
    mcfg = _validate_method_config(name, preset, cfg.method_config, where)
    res = getattr(mcfg, "resolution", None)
    if res is not None and res != cfg.data.resolution:
        raise ConfigError(f"{where} ({name}): method resolution {res} != dataset {ds_name!r} resolution "
                          f"{cfg.data.resolution}; set method_config.resolution or use another preset")
    if budget.get("images") is not None:
        cfg.train.images = int(budget["images"])
    run = cfg.model_dump(mode="json")
    label = entry.label or name
    if point:
        label += "[" + ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) + "]"
    cid = cell_hash(run, budget, sampling, suite.metrics, suite.metrics_options, ds.reference)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in (entry.label or name))
    return Cell(id=f"{safe}-{cid}", label=label, method=name, preset=preset, dataset=ds_name, seed=seed,
                run=run, budget=budget, sampling=sampling, metrics=list(suite.metrics),
                metrics_options=dict(suite.metrics_options), reference=ds.reference, sweep=dict(point),
                eval_every=suite.eval_every.model_dump(exclude_none=True) if suite.eval_every else None)


def sampling_settings(sampling: dict[str, Any]) -> list[tuple[int | None, float]]:
    """Every (steps, guidance) pair a cell samples and evaluates."""
    return [(s, float(g)) for s in sampling["steps"] for g in sampling["guidance"]]


def setting_tag(steps: int | None, guidance: float) -> str:
    return f"steps{'default' if steps is None else steps}-cfg{guidance:g}"


def shard_seeds(sampling: dict[str, Any], shard: int) -> list[int]:
    """Contiguous seed block of one shard (shards concatenated in order = seed_start .. + n)."""
    n, k = int(sampling["n"]), int(sampling["shards"])
    lo, hi = shard * n // k, (shard + 1) * n // k
    return list(range(sampling["seed_start"] + lo, sampling["seed_start"] + hi))


# ---- cluster profiles (slurm/*.yaml) -----------------------------------------------------------
class JobResources(Strict):
    partition: str | None = Field(None, description="default: the profile's partition")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0, description="training: one task (DDP rank) per GPU")
    cpus_per_task: int = Field(4, ge=1)
    mem_gb: float = Field(16, gt=0)
    time_min: int = Field(1440, gt=0, description="per job; training is sliced to the partition limit")


class ClusterProfile(Strict):
    name: str = ""
    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job")
    signal_delay_s: int = Field(120, ge=10, description="USR2 this long before the time limit (checkpoint)")
    max_requeues: int = Field(100, ge=0, description="time-slice / preemption requeues per training job")
    array_parallelism: int | None = Field(None, gt=0)
    throughput_flops: float | None = Field(None, gt=0, description="sustained training FLOP/s per GPU; dry runs "
                                                                    "convert planned FLOPs to GPU-hours with it")
    extra: dict[str, str] = Field(default_factory=dict, description="additional sbatch options")
    train: JobResources = Field(default_factory=JobResources)
    sample: JobResources = Field(default_factory=JobResources)
    evaluate: JobResources = Field(default_factory=JobResources)

    def resources(self, kind: str) -> JobResources:
        return {"train": self.train, "sample": self.sample, "evaluate": self.evaluate}[kind]


PROFILE_DIR = Path(__file__).resolve().parent.parent / "slurm"


def load_profile(ref: str | Path) -> ClusterProfile:
    """A profile by name (slurm/<name>.yaml) or by path."""
    p = Path(ref)
    if not p.suffix:
        p = PROFILE_DIR / f"{ref}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown cluster profile {str(ref)!r}: {str(p)!r} does not exist; "
                          f"profiles in slurm/: {', '.join(known) or 'none'}")
    raw = read_yaml_mapping(p, "cluster profile")
    raw.setdefault("name", p.stem)
    try:
        return validate_model(ClusterProfile, raw)  # type: ignore[return-value]
    except ConfigError as err:
        raise ConfigError(f"cluster profile {str(p)!r}: {err}") from None
