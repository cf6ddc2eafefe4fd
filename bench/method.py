"""The Method interface every adapter implements, and the registry.

A method owns its networks, its training stages, its loss and its sampler. The trainer owns
optimizers, EMAs, precision, distribution and checkpoints; it never branches on a method's name.

Randomness contract (what makes resume exact and DDP equal to one process):
- training noise is drawn per example through ``batch.rng`` (one generator per example, seeded from
  the run seed and the example's position in the data stream);
- sampling noise is drawn per image through ``rng`` built from the image seeds, so image i is the
  same whatever the batch size or the number of GPUs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from bench.diffusion.rng import StackedRandom

CONDITIONING_KINDS = ("none", "class", "text")


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the field and what was expected."""


class MethodConfig(BaseModel):
    """Base of every adapter's Config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    resolution: int = 32           # target (highest) resolution of generated images
    channels: int = 3
    num_classes: int = 0           # 0 = unconditional (or text) ; > 0 = class-conditional
    conditioning: str = "none"     # one of CONDITIONING_KINDS
    text_dim: int = 0              # width of caption embeddings when conditioning == "text"
    label_dropout: float = 0.0     # probability to drop the condition in training (enables CFG)


@dataclass
class Stage:
    """One training stage.

    share: fraction of the run's training budget (images or FLOPs) spent in this stage.
    resolutions: image resolutions the batch must carry (the loader average-pools the data).
    trainable: module names (keys of Method.modules()) the optimizer updates; None = all trainable.
    lr_mult: per-module learning-rate multipliers (e.g. a lower core rate when growing).
    enter: called once when the stage starts (also when resuming into or past it), before the
        optimizer is built: grow / wrap / freeze networks here. Must be deterministic in structure.
    init_from_ema: at the transition into this stage, copy the primary EMA into the raw weights
        before ``enter`` (a grown model starts from the smoothed previous model).
    """

    name: str
    share: float
    resolutions: tuple[int, ...]
    trainable: tuple[str, ...] | None = None
    lr_mult: dict[str, float] = field(default_factory=dict)
    enter: Callable[[], None] | None = None
    init_from_ema: bool = True
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """What a training step sees.

    images: resolution -> float tensor in [-1, 1], NCHW, for each resolution the stage asked for.
    labels: int64 class ids (N,) or None.
    text: caption embeddings (N, text_dim) or (N, L, text_dim), or None.
    rng: per-example random streams (training noise must come from here).
    """

    images: dict[int, torch.Tensor]
    labels: torch.Tensor | None = None
    text: torch.Tensor | None = None
    rng: StackedRandom | None = None

    @property
    def size(self) -> int:
        return next(iter(self.images.values())).shape[0]

    def top(self) -> torch.Tensor:
        """Images at the highest resolution carried."""
        return self.images[max(self.images)]

    def to(self, device: torch.device | str) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch({r: mv(x) for r, x in self.images.items()}, mv(self.labels), mv(self.text), self.rng)


@dataclass
class Condition:
    """Conditioning for sampling: class labels, caption embeddings, or nothing."""

    labels: torch.Tensor | None = None
    text: torch.Tensor | None = None

    def null(self) -> "Condition":
        """The unconditional counterpart for classifier-free guidance: labels -1 (null class), zero text."""
        return Condition(None if self.labels is None else torch.full_like(self.labels, -1),
                         None if self.text is None else torch.zeros_like(self.text))

    @property
    def empty(self) -> bool:
        return self.labels is None and self.text is None

    def select(self, idx: slice) -> "Condition":
        return Condition(None if self.labels is None else self.labels[idx],
                         None if self.text is None else self.text[idx])


class Method:
    """Base class of every adapter. Subclasses set ``name``, ``Config``, ``presets``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    conditioning: ClassVar[tuple[str, ...]] = ("none", "class")
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    # The paper's training settings per preset (TrainConfig fields); suites apply them unless overridden.
    train_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Overrides that switch off dropout-like randomness drawn from the global RNG; used by the DDP
    # equivalence test (ranks draw dropout masks for different examples than one process would).
    deterministic_overrides: ClassVar[dict[str, Any]] = {}
    # preset -> the `key` of the bench/published.csv rows it reproduces (bench.published); presets not
    # listed are shown beside no published number.
    published_keys: ClassVar[dict[str, str]] = {}
    # False for methods that map an input to an image (a decoder) rather than generate from noise alone:
    # suites' `method: all` leaves them out of unconditional generation comparisons.
    generative: ClassVar[bool] = True

    def __init__(self, config: MethodConfig):
        if config.conditioning not in self.conditioning:
            raise ConfigError(f"{self.name}: conditioning={config.conditioning!r} is not supported; "
                              f"allowed: {', '.join(self.conditioning)}")
        self.config = config
        self.device = torch.device("cpu")

    # ---- state -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every nn.Module whose state is checkpointed, by name."""
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {k: m.state_dict() for k, m in self.modules().items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        mods = self.modules()
        missing = set(mods) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks modules {sorted(missing)}")
        for k, m in mods.items():
            m.load_state_dict(state[k])

    def param_count(self, names: Iterable[str] | None = None) -> int:
        mods = self.modules()
        names = list(mods) if names is None else list(names)
        return sum(p.numel() for k in names for p in mods[k].parameters())

    def sampling_modules(self) -> tuple[str, ...]:
        """Modules used by sample() (counted as the model's parameters)."""
        return tuple(self.modules())

    # ---- training ----------------------------------------------------------------------------
    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        """A scalar loss (mean over the batch) and a dict of logged floats."""
        raise NotImplementedError

    def after_step(self, stage: Stage, step: int, images_seen: int) -> None:
        """Hook after each optimizer step (e.g. a consistency target-EMA update)."""

    def stage_progress(self, stage: Stage, fraction: float) -> None:
        """Told the fraction [0, 1] of the current stage already trained (curricula use it)."""

    # ---- sampling ----------------------------------------------------------------------------
    def default_steps(self) -> int:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        """Images in [-1, 1] (N, C, R, R) at the target resolution, and the NFE per image used.

        ``rng`` holds one random stream per image; guidance 1.0 = no classifier-free guidance.
        """
        raise NotImplementedError

    # ---- cost (counted by bench.flops; the interface itself never measures) ------------------
    def example_batch(self, stage: Stage, n: int = 2) -> Batch:
        """A synthetic batch of the right shapes, for FLOP counting and tests."""
        cfg = self.config
        g = torch.Generator().manual_seed(0)
        images = {r: torch.rand(n, cfg.channels, r, r, generator=g) * 2 - 1 for r in stage.resolutions}
        labels = torch.randint(0, max(cfg.num_classes, 1), (n,), generator=g) if cfg.num_classes else None
        text = _example_text(cfg, n, g)
        b = Batch(images, labels, text, StackedRandom(list(range(n)), device=self.device))
        return b.to(self.device)

    def example_condition(self, n: int) -> Condition:
        cfg = self.config
        g = torch.Generator().manual_seed(1)
        labels = torch.randint(0, cfg.num_classes, (n,), generator=g) if cfg.num_classes else None
        text = _example_text(cfg, n, g)
        return Condition(None if labels is None else labels.to(self.device),
                         None if text is None else text.to(self.device))

    def flops_batch(self, stage: Stage) -> int:
        """How many examples FLOPs per example are counted on (bench.flops divides the count by it).
        A loss that splits the batch into shares (mdm's mixed ratios) returns a size that makes every share
        exact."""
        return 2

    def structured_for(self, stage: Stage) -> "Method":
        """This method with the network structure ``stage`` trains: itself by default. A method whose
        ``enter`` grows the network returns a grown copy, so a stage can be counted before it is entered."""
        return self


def _example_text(cfg: MethodConfig, n: int, g: torch.Generator) -> torch.Tensor | None:
    """Random caption embeddings of the shape the method takes: (n, text_dim), or (n, text_length, text_dim)
    for token conditioning (methods/_text.py)."""
    if cfg.conditioning != "text":
        return None
    if getattr(cfg, "text_conditioning", "pooled") == "tokens":
        return torch.randn(n, cfg.text_length, cfg.text_dim, generator=g)
    return torch.randn(n, cfg.text_dim, generator=g)


# ---- registry --------------------------------------------------------------------------------
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Method]]:
    """Import every adapter module under ``methods/`` so each registers itself."""
    import importlib
    import pkgutil

    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    return REGISTRY


def get_method_class(name: str) -> type[Method]:
    reg = load_all()
    if name not in reg:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(sorted(reg))}")
    return reg[name]


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: the dotted field, what was wrong, what is allowed."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        if e["type"] == "extra_forbidden":
            allowed = ""
            model = getattr(err, "_model", None)
            if model is not None:
                allowed = f"; allowed fields: {', '.join(model.model_fields)}"
            lines.append(f"unknown field {where!r}{allowed}")
        else:
            lines.append(f"field {where!r}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def validate_model(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> BaseModel:
    """Validate ``data`` into ``model``; raise ConfigError with one readable line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        err._model = model  # type: ignore[attr-defined]
        raise ConfigError(format_validation_error(err, prefix)) from None


def resolve_method_config(name: str, preset: str | None = None, overrides: dict[str, Any] | None = None,
                          prefix: str = "method.") -> MethodConfig:
    """A method's validated Config: its preset plus field overrides (one-line errors)."""
    cls = get_method_class(name)
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in cls.presets:
            raise ConfigError(f"unknown preset {preset!r} for method {name!r}; "
                              f"presets: {', '.join(cls.presets)}")
        data.update(cls.presets[preset])
    data.update(overrides or {})
    return validate_model(cls.Config, data, prefix=prefix)  # type: ignore[return-value]


def build_method(name: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method from a preset plus field overrides."""
    return get_method_class(name)(resolve_method_config(name, preset, overrides))


def method_summary(cls: type[Method], preset: str) -> dict[str, Any]:
    m = build_method(cls.name, preset)
    return {
        "method": cls.name,
        "preset": preset,
        "stages": [f"{s.name}({s.share:g})" for s in m.stages()],
        "conditioning": ",".join(cls.conditioning),
        "params": m.param_count(m.sampling_modules()),
    }


def replace_stage(stage: Stage, **kw: Any) -> Stage:
    return dataclasses.replace(stage, **kw)
