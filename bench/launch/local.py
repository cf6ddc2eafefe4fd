"""The local executor: every phase in this process, cell after cell; a failed cell is recorded and the
next one runs."""
from __future__ import annotations

import time
from typing import Callable

from bench.launch.curve import evaluate_point
from bench.launch.phases import MetricsFn, default_metrics, evaluate_phase, sample_phase, train_with_points
from bench.launch.planning import PlannedCell, is_finished, prepare


def run_local(planned: list[PlannedCell], suite_name: str, metrics_fn: MetricsFn | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run cells one after another in this process. Returns cell id -> final status."""
    out = {}
    for i, pc in enumerate(planned):
        rf = prepare(pc, suite_name)
        head = f"[{i + 1}/{len(planned)}] {pc.cell.id} ({pc.cell.label})"
        if is_finished(rf):
            log(f"{head}: done already, skipped")
            out[pc.cell.id] = "done"
            continue
        t0 = time.time()
        try:
            # eval_every: train in slices, scoring each slice's checkpoint before training on
            result = train_with_points(rf.path, progress, lambda images, rf=rf: evaluate_point(
                rf, images, metrics_fn or default_metrics, rf.read_cell()))
            if not result.get("done"):
                raise RuntimeError("training stopped before its budget was spent")
            for k in range(pc.cell.sampling["shards"]):
                sample_phase(rf.path, k)
            evaluate_phase(rf.path, metrics_fn)
            out[pc.cell.id] = "done"
            log(f"{head}: done in {time.time() - t0:.1f}s")
        except Exception as err:  # noqa: BLE001 - one failed cell never stops the others
            line = rf.error_line() or rf.fail("driver", err)
            if rf.status() != "failed":
                rf.fail("driver", err)
            out[pc.cell.id] = "failed"
            log(f"{head}: FAILED: {line}")
    return out
