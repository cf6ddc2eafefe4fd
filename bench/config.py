"""The run configuration: what `bench train <config.yaml>` reads and a suite cell resolves to."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.data.spec import DatasetSpec
from bench.method import ConfigError, validate_model
from bench.safeload import yaml_value


LOGGERS = ("jsonl", "tensorboard", "wandb")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TrainConfig(Strict):
    """Optimisation and bookkeeping; budgets are in training images (EDM style)."""

    images: int = Field(20_000, gt=0, description="total training images over all stages")
    batch: int = Field(32, gt=0, description="global batch (all ranks, all accumulation rounds)")
    accumulate: int = Field(1, ge=1, description="gradient-accumulation rounds per step")
    optimizer: str = Field("adam", pattern="^(adam|adamw|radam)$")
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_images: int = Field(2_000, ge=0, description="linear LR ramp-up length in images")
    grad_clip: float | None = Field(None, description="max global grad norm; None = no clipping")
    ema_halflife_kimg: list[float] = Field(default_factory=lambda: [5.0],
                                           description="EMA half-lives in kimg; the first is the primary")
    ema_rampup: float | None = Field(0.05, description="half-life <= rampup * images seen (None = off)")
    precision: str = Field("auto", pattern="^(auto|fp32|bf16)$", description="auto = bf16 on GPU, fp32 on CPU")
    checkpoint_images: int = Field(5_000, gt=0, description="write a checkpoint every N images")
    keep_checkpoints: int = Field(2, ge=1)
    log_images: int = Field(500, gt=0)
    workers: int = Field(0, ge=0, description="data-loader worker processes")
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="CPU intra-op threads (None: torch's default); "
                                                         "float results depend on it, so pin it to compare runs")
    progress: bool = True
    compile: bool = Field(False, description="torch.compile each network's forward (nn.Module.compile)")
    channels_last: str = Field("auto", pattern="^(auto|on|off)$",
                               description="channels_last memory format; auto = on for conv nets on CUDA")
    shard: str = Field("none", pattern="^(none|optimizer)$",
                       description="optimizer = ZeRO-1 (each rank keeps 1/W of the Adam state); checkpoints "
                                   "hold the full state, so a run resumes on any world size")
    bucket_mb: float = Field(25.0, gt=0, description="gradient all-reduce bucket size (overlaps backward)")
    # Watching a run (bench/loggers.py, bench/preview.py): rank 0 only; they never touch the training RNG.
    loggers: list[str] = Field(default_factory=lambda: ["jsonl"],
                               description="where scalars go: jsonl (always on), tensorboard, wandb (offline)")
    preview_images: int | None = Field(None, gt=0, description="an EMA sample grid every N images (None = off)")
    preview_grid: int = Field(16, ge=1, le=256, description="images per preview grid: seeds 0 .. N-1, every time")
    preview_steps: int | None = Field(None, ge=1, description="sampler steps for previews (None: method default)")

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in LOGGERS]
        if bad:
            raise ValueError(f"unknown logger {bad[0]!r}; allowed: {', '.join(LOGGERS)}")
        return ["jsonl"] + [x for x in LOGGERS[1:] if x in v]      # jsonl always on, no duplicates

    @field_validator("ema_halflife_kimg")
    @classmethod
    def _nonempty(cls, v: list[float]) -> list[float]:
        if not v or any(h <= 0 for h in v):
            raise ValueError("needs at least one positive half-life")
        return v


class RunConfig(Strict):
    method: str
    preset: str | None = None
    method_config: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset")
    data: DatasetSpec
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0
    stage_images: list[int] | None = Field(
        None, description="explicit images per stage (matched compute); default: shares x train.images")


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['train.batch=64', 'method_config.dropout=0.1']`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.batch=64")
        k, v = item.split("=", 1)
        set_dotted(out, k.strip().lstrip("-"), yaml_value(v, k.strip().lstrip("-")))
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file's top-level mapping, or one ConfigError line naming the file and what is wrong."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory; give a YAML file")
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {str(p)!r} is unreadable ({type(err).__name__}: {err}); "
                          "give a readable UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML for the safe loader (no python/* tags){at}: "
                          f"{reason}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {str(p)!r}: expected a mapping at top level, got {type(raw).__name__}")
    return raw


def check_data_resolution(cfg: RunConfig) -> None:
    """Readers fit every image to data.resolution and stages only pool down from it, so the data must come
    at the resolution the method generates: checked here, before any network is built or trained."""
    from bench.method import resolve_method_config

    mcfg = resolve_method_config(cfg.method, cfg.preset, cfg.method_config)
    res = getattr(mcfg, "resolution", None)
    if res is not None and int(res) != int(cfg.data.resolution):
        preset = f" (preset {cfg.preset!r})" if cfg.preset else ""
        raise ConfigError(f"field 'data.resolution': the data gives {cfg.data.resolution}-px images but method "
                          f"{cfg.method!r}{preset} generates {res} px; set data.resolution={res} or "
                          f"method_config.resolution={cfg.data.resolution}")


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                    data: dict[str, Any] | None = None) -> RunConfig:
    """The validated run config (one-line errors), with the data / method resolution check."""
    raw: dict[str, Any] = dict(data or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml_mapping(path, "config file"))
    if overrides:
        raw = deep_merge(raw, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    cfg: RunConfig = validate_model(RunConfig, raw)  # type: ignore[assignment]
    check_data_resolution(cfg)
    return cfg


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
