"""Planning: each cell's budget turned into images per stage from the counted per-stage costs (cached per
method config), and the run folder a planned cell is prepared in. Raises ConfigError (one line) before
anything runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compute import ComputePlan, FlopCache, default_cache_path, fixed_images_plan, split_budget
from bench.flops import StageCost
from bench.store import RunFolder, environment_record, now
from bench.suite import Cell


@dataclass
class PlannedCell:
    cell: Cell
    plan: ComputePlan
    run_dir: Path
    costs: list[StageCost] = field(default_factory=list)     # per stage, as counted (memory estimates)

    def record(self) -> dict[str, Any]:
        return {**self.cell.to_dict(), "plan": self.plan.to_dict()}


def plan_cells(cells: list[Cell], root: Path, cache: FlopCache | None = None) -> list[PlannedCell]:
    """Count FLOPs per training example per stage (meta device, cached per resolved method config) and
    turn each cell's budget into images per stage."""
    root = Path(root).resolve()          # jobs may start in another working directory
    cache = cache or FlopCache(default_cache_path(root))
    out = []
    for cell in cells:
        run = cell.run
        costs = cache.costs(cell.method, cell.preset, run.get("method_config") or {})
        stages = [(c.name, c.share, c.flops_per_example) for c in costs]
        batch = int(run["train"]["batch"])
        total = budget_flops(cell.budget)
        label = f"cell {cell.id} ({cell.label})"
        if total is None:
            plan = fixed_images_plan(int(cell.budget["images"]), stages, batch)
        else:
            plan = split_budget(total, stages, batch, label=label)
        run["stage_images"] = [s.images for s in plan.stages]
        run["train"]["images"] = plan.images
        out.append(PlannedCell(cell, plan, root / cell.id, list(costs)))
    return out


def budget_flops(budget: dict[str, Any]) -> float | None:
    if budget.get("flops") is not None:
        return float(budget["flops"])
    if budget.get("gpu_hours") is not None:
        return float(budget["gpu_hours"]) * 3600.0 * float(budget["throughput_flops"])
    return None


_budget_flops = budget_flops          # the name earlier callers used


def prepare(pc: PlannedCell, suite_name: str) -> RunFolder:
    """Write cell.yaml and the driver's manifest part (first time, or refreshed on a re-run)."""
    rf = RunFolder(pc.run_dir)
    rf.path.mkdir(parents=True, exist_ok=True)
    rf.write_cell({"suite": suite_name, **pc.record()})
    rf.record("driver", {"suite": suite_name, "config": pc.record(), "prepared_at": now(), **environment_record()})
    if not (rf.path / "status").is_file():
        rf.set_status("pending")
    return rf


def is_finished(rf: RunFolder) -> bool:
    return rf.status() == "done" and rf.metrics_file.is_file()
