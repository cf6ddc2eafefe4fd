"""Matched compute: a cell's FLOP budget turned into images per stage, the spend check, and the cache of
per-stage costs that planning reads.

Costs are counted by bench.flops (torch's counter; a multiply-add = 2 FLOPs; MACs = FLOPs / 2 are
reported beside them) on a meta-device twin of the method, so planning never runs a real network.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.flops import COUNTER_VERSION, FLOPS_PER_MAC, StageCost, stage_costs
from bench.method import ConfigError, resolve_method_config


# ---- matched budgets ---------------------------------------------------------------------------


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


# ---- counted costs per method, cached (a 200-cell sweep must plan in seconds) -------------------
class FlopCache:
    """Per-stage costs (bench.flops.StageCost) keyed by (method, resolved config, counter version).

    In memory, and on disk as JSON when ``path`` is given. The key is the *resolved* method config, so a
    preset and the same fields given as overrides share an entry; cached entries of another counter version
    or torch version are never read.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._mem: dict[str, list[StageCost]] = {}
        if self.path and self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                self._mem = {k: [StageCost.from_dict(x) for x in v["stages"]] for k, v in raw.items()
                             if isinstance(v, dict) and v.get("version") == COUNTER_VERSION}
            except (ValueError, OSError, KeyError, TypeError):
                self._mem = {}            # unreadable cache: count again (and overwrite it)

    @staticmethod
    def key(method: str, preset: str | None, method_config: dict[str, Any]) -> str:
        resolved = resolve_method_config(method, preset, method_config).model_dump(mode="json")
        # the preset's values are in the resolved config, so the preset's name is not part of the key
        blob = json.dumps({"m": method, "c": resolved, "v": COUNTER_VERSION, "torch": torch.__version__},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def costs(self, method: str, preset: str | None, method_config: dict[str, Any],
              count: Callable[[], list[StageCost]] | None = None) -> list[StageCost]:
        k = self.key(method, preset, method_config)
        with self._lock:
            if k in self._mem:
                return self._mem[k]
        value = (count or (lambda: stage_costs(method, preset, method_config)))()
        with self._lock:
            self._mem[k] = value
            if self.path:
                from bench.io import atomic_write_json
                atomic_write_json(self.path, {key: {"version": COUNTER_VERSION, "stages": [c.to_dict() for c in v]}
                                              for key, v in self._mem.items()})
        return value

    def stages(self, method: str, preset: str | None, method_config: dict[str, Any]
               ) -> list[tuple[str, float, float]]:
        """(stage name, share, training FLOPs per example) per stage."""
        return [(c.name, c.share, c.flops_per_example) for c in self.costs(method, preset, method_config)]


def default_cache_path(root: str | Path) -> Path:
    return Path(root) / ".flops_cache.json"


__all__ = ["FLOPS_PER_MAC", "StagePlan", "ComputePlan", "split_budget", "fixed_images_plan", "spend_check",
           "FlopCache", "StageCost", "default_cache_path"]
