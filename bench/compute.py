"""FLOP accounting for matched compute.

FLOPs are counted with torch.utils.flop_counter on a real (synthetic-shaped) batch; torch counts a
multiply-add as 2 FLOPs. MACs = FLOPs / 2 are reported beside them.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.diffusion.rng import StackedRandom


def measure_training_flops(method, stage, n: int = 2) -> float:
    """FLOPs of one training example (loss forward + backward) in ``stage``."""
    batch = method.example_batch(stage, n)
    mods = method.modules()
    was_training = {k: m.training for k, m in mods.items()}
    for m in mods.values():
        m.train()
    try:
        with FlopCounterMode(display=False) as counter:
            loss, _ = method.loss(batch, stage)
            loss.backward()
    finally:
        for k, m in mods.items():
            m.train(was_training[k])
            m.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


@torch.no_grad()
def measure_sampling_flops(method, steps: int | None = None, n: int = 1, guidance: float = 1.0) -> float:
    """FLOPs to generate one image with ``steps`` sampler steps (NFE x FLOPs per evaluation)."""
    for m in method.modules().values():
        m.eval()
    cond = method.example_condition(n)
    with FlopCounterMode(display=False) as counter:
        method.sample(StackedRandom(list(range(n)), device=method.device), cond, steps, guidance)
    return counter.get_total_flops() / n


# ---- matched budgets ---------------------------------------------------------------------------

FLOPS_PER_MAC = 2          # torch's FlopCounterMode counts a multiply-add as 2 FLOPs


@dataclass
class StagePlan:
    name: str
    share: float
    flops_per_example: float          # training FLOPs (forward + backward) per example
    macs_per_example: float
    budget_flops: float               # this stage's share of the cell budget
    images: int                       # whole global batches
    steps: int

    @property
    def planned_flops(self) -> float:
        return self.images * self.flops_per_example


@dataclass
class ComputePlan:
    budget_flops: float
    batch: int
    stages: list[StagePlan] = field(default_factory=list)
    matched: bool = True              # False for a fixed-images budget

    @property
    def planned_flops(self) -> float:
        return sum(s.planned_flops for s in self.stages)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.stages)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(planned_flops=self.planned_flops, planned_macs=self.planned_flops / FLOPS_PER_MAC,
                 images=self.images, steps=self.steps)
        return d


def split_budget(budget_flops: float, stages: list[tuple[str, float, float]], batch: int,
                 label: str = "method") -> ComputePlan:
    """Stage s gets budget·share_s FLOPs → images_s = that / F_s, rounded to whole global batches.

    ``stages``: (name, share, flops_per_example). Raises ConfigError when a stage gets < 1 step.
    """
    from bench.method import ConfigError

    total_share = sum(s[1] for s in stages)
    if total_share <= 0:
        raise ConfigError(f"{label}: stage shares sum to {total_share}; expected > 0")
    plan = ComputePlan(float(budget_flops), int(batch))
    for name, share, fpe in stages:
        if fpe <= 0:
            raise ConfigError(f"{label}: stage {name!r} measured {fpe} FLOPs per example; expected > 0")
        stage_budget = budget_flops * share / total_share
        steps = round(stage_budget / (fpe * batch))
        if steps < 1:
            raise ConfigError(f"{label}: budget {budget_flops:.3g} FLOPs is too small for one step of stage "
                              f"{name!r} (share {share:g}; one step of batch {batch} costs {fpe * batch:.3g} "
                              f"FLOPs); raise budget.flops or lower train.batch")
        plan.stages.append(StagePlan(name, share, fpe, fpe / FLOPS_PER_MAC, stage_budget, steps * batch, steps))
    return plan


def fixed_images_plan(images: int, stages: list[tuple[str, float, float]], batch: int) -> ComputePlan:
    """A fixed number of training images split by stage shares (not compute-matched)."""
    total_share = sum(s[1] for s in stages)
    plan = ComputePlan(0.0, int(batch), matched=False)
    for name, share, fpe in stages:
        steps = max(1, round(images * share / total_share / batch))
        plan.stages.append(StagePlan(name, share, fpe, fpe / FLOPS_PER_MAC, 0.0, steps * batch, steps))
    plan.budget_flops = plan.planned_flops
    return plan


def spend_check(budget_flops: float, spent_flops: float, tolerance: float = 0.02) -> dict[str, Any]:
    """Relative deviation of the FLOPs actually spent from the budget; flagged beyond ``tolerance``."""
    rel = (spent_flops - budget_flops) / budget_flops if budget_flops else float("inf")
    return {"budget_flops": budget_flops, "spent_flops": spent_flops, "spend_rel_error": rel,
            "spend_flagged": bool(abs(rel) > tolerance)}


# ---- measured FLOPs per method, cached (a 200-cell sweep must plan in seconds) -------------------
class FlopCache:
    """FLOPs per training example per stage, keyed by the method's resolved config.

    In memory, and on disk as JSON when ``path`` is given (measuring a large net on CPU takes seconds;
    a suite re-run or a sweep over optimiser settings must not repeat it).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._mem: dict[str, list[tuple[str, float, float]]] = {}
        if self.path and self.path.is_file():
            try:
                self._mem = {k: [tuple(x) for x in v] for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, OSError):
                self._mem = {}

    @staticmethod
    def key(method: str, preset: str | None, method_config: dict[str, Any]) -> str:
        blob = json.dumps({"m": method, "p": preset, "c": method_config, "torch": torch.__version__},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stages(self, method: str, preset: str | None, method_config: dict[str, Any],
               measure: Callable[[], list[tuple[str, float, float]]] | None = None
               ) -> list[tuple[str, float, float]]:
        k = self.key(method, preset, method_config)
        with self._lock:
            if k in self._mem:
                return self._mem[k]
        value = (measure or (lambda: measure_method_stages(method, preset, method_config)))()
        with self._lock:
            self._mem[k] = value
            if self.path:
                from bench.io import atomic_write_json
                atomic_write_json(self.path, self._mem)
        return value


def measure_method_stages(method: str, preset: str | None, method_config: dict[str, Any]
                          ) -> list[tuple[str, float, float]]:
    """(stage name, share, training FLOPs per example) for every stage of a freshly built method.

    Stages are entered in order (``enter`` may grow the network) so later stages are measured on the
    network they really train. Runs on CPU with a batch of 2.
    """
    from bench.method import build_method

    torch.manual_seed(0)
    m = build_method(method, preset, method_config)
    out = []
    for stage in m.stages():
        if stage.enter:
            stage.enter()
        out.append((stage.name, float(stage.share), float(m.flops_per_example(stage))))
    return out


def default_cache_path(root: str | Path) -> Path:
    return Path(root) / ".flops_cache.json"


@torch.no_grad()
def measure_sampling_cost(method, steps: int | None = None, guidance: float = 1.0) -> dict[str, float]:
    """Sampling cost per image: NFE, FLOPs per image, FLOPs per network evaluation (= per image / NFE)."""
    for m in method.modules().values():
        m.eval()
    cond = method.example_condition(1)
    with FlopCounterMode(display=False) as counter:
        _, nfe = method.sample(StackedRandom([0], device=method.device), cond, steps, guidance)
    flops = float(counter.get_total_flops())
    return {"nfe": int(nfe), "sample_flops_per_image": flops, "sample_macs_per_image": flops / FLOPS_PER_MAC,
            "flops_per_eval": flops / max(int(nfe), 1)}


__all__ = ["FLOPS_PER_MAC", "StagePlan", "ComputePlan", "split_budget", "fixed_images_plan", "spend_check",
           "FlopCache", "measure_method_stages", "measure_training_flops", "measure_sampling_flops",
           "measure_sampling_cost", "default_cache_path"]
