"""The per-cell phases, train -> sample shards -> evaluate: run in the driver by the local executor and
inside jobs by the SLURM one.

Every phase is idempotent: finished training returns at once, existing shards are skipped, so a re-run
(or a requeued job) only does what is missing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from bench.compute import spend_check
from bench.flops import sampling_cost
from bench.launch.curve import eval_points, evaluate_curve, keep_checkpoint
from bench.launch.scoring import score_setting
from bench.store import RunFolder, environment_record, now
from bench.suite import Cell, sampling_settings, setting_tag, shard_seeds

MetricsFn = Callable[[dict[str, Any], list[Path]], dict[str, Any]]


def _cell(rf: RunFolder) -> Cell:
    return Cell.from_dict(rf.read_cell())


def train_phase(run_dir: str | Path, progress: bool = True, stop_after_images: int | None = None) -> dict[str, Any]:
    """Train (or resume) the cell, up to ``stop_after_images`` if given; returns bench.train.train's summary."""
    from bench.train import train

    rf = RunFolder(run_dir)
    summary = rf.train_summary()
    if summary.get("done"):
        return summary
    cell = _cell(rf)
    cfg = cell.run_config()
    cfg.train.progress = progress
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        rf.clear_error()
        rf.set_status("training")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        rf.record("train", {"started_at": now(), "restarts": restarts, **environment_record()})
    try:
        result = train(cfg, rf.path, stop_after_images=stop_after_images)
    except BaseException as err:
        if rank == 0 and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            rf.fail("train", err)
        raise
    if rank == 0:
        rf.record("train", {"ended_at" if result.get("done") else "stopped_at": now(),
                            "images": result.get("images"), "flops": result.get("flops"),
                            "done": result.get("done")})
    return result


def train_with_points(run_dir: str | Path, progress: bool = True,
                      on_point: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Train the cell in slices ending at its evaluation points (keeping each point's checkpoint and calling
    ``on_point(images)`` after it), then to the end. Returns the last train summary; one that is not
    ``done`` means training was asked to stop (a SLURM requeue) and resumes on the next call."""
    rf = RunFolder(run_dir)
    cell = rf.read_cell()
    summary = rf.train_summary()
    if summary.get("done"):
        return summary
    for p in eval_points(cell):
        if int(summary.get("images") or 0) >= p:
            continue
        summary = train_phase(run_dir, progress=progress, stop_after_images=p)
        if summary.get("done") or int(summary.get("images") or 0) < p:
            return summary                    # finished early or stopped from outside: nothing to keep
        if int(os.environ.get("RANK", "0")) == 0:
            keep_checkpoint(rf, int(summary["images"]), float(summary["flops"]))
            if on_point is not None:
                on_point(int(summary["images"]))
    return train_phase(run_dir, progress=progress)


def sample_phase(run_dir: str | Path, shard: int) -> list[str]:
    """Generate this shard's seeds for every (steps, guidance) setting; existing shard files are kept."""
    from bench.sample import sample_to_npz

    rf = RunFolder(run_dir)
    cell = _cell(rf)
    s = cell.sampling
    if shard == 0:
        rf.set_status("sampling")
    rf.record(f"sample-{shard}", {"started_at": now(), **environment_record()})
    outs = []
    try:
        for steps, guidance in sampling_settings(s):
            out = shard_path(rf, steps, guidance, shard, s["shards"])
            if not out.is_file():
                sample_to_npz(rf.path, shard_seeds(s, shard), out, batch=s["batch"], steps=steps,
                              guidance=guidance, grid=shard == 0)
            outs.append(str(out))
    except Exception as err:
        rf.fail(f"sample-{shard}", err)
        raise
    rf.record(f"sample-{shard}", {"ended_at": now()})
    return outs


def shard_path(rf: RunFolder, steps: int | None, guidance: float, shard: int, shards: int) -> Path:
    return rf.samples / setting_tag(steps, guidance) / f"shard-{shard:04d}-of-{shards:04d}.npz"


def evaluate_phase(run_dir: str | Path, metrics_fn: MetricsFn | None = None) -> dict[str, Any]:
    """Metrics per sampling setting, sampling cost, and the spend check → metrics.json, status done."""
    from bench.io import atomic_write_json
    from bench.sample import load_run

    rf = RunFolder(run_dir)
    cell_d = rf.read_cell()
    cell = Cell.from_dict(cell_d)
    rf.set_status("evaluating")
    rf.record("eval", {"started_at": now(), **environment_record()})
    try:
        summary = rf.train_summary()
        if not summary.get("done"):
            raise RuntimeError(f"training did not finish (train_summary: {summary or 'missing'})")
        plan = cell_d.get("plan") or {}
        budget = float(plan.get("budget_flops") or 0.0)
        spend = spend_check(budget, float(summary.get("flops") or 0.0), float(cell.budget.get("tolerance", 0.02)))
        method, _ = load_run(rf.path, device="cpu")
        metrics_fn = metrics_fn or default_metrics
        curve = evaluate_curve(rf, metrics_fn, cell_d) if cell_d.get("eval_every") else []
        settings = []
        for steps, guidance in sampling_settings(cell.sampling):
            shards = [shard_path(rf, steps, guidance, k, cell.sampling["shards"])
                      for k in range(cell.sampling["shards"])]
            missing = [str(p) for p in shards if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"sample shards missing: {', '.join(missing)}")
            settings.append(score_setting(cell_d, rf, shards, steps, guidance, sampling_cost(method, steps, guidance),
                                          metrics_fn))
        if curve:
            curve = [*curve, {"images": summary.get("images"), "flops": summary.get("flops"), "final": True,
                              "settings": settings}]
        record = {"cell": cell.id, "label": cell.label, "train": summary, **spend,
                  "planned_flops": plan.get("planned_flops"), "params": method.param_count(method.sampling_modules()),
                  "settings": settings, **({"curve": curve} if curve else {}), "evaluated_at": now()}
        atomic_write_json(rf.metrics_file, record)
    except Exception as err:
        rf.fail("eval", err)
        raise
    rf.record("eval", {"ended_at": now()})
    rf.set_status("done")
    return record


def default_metrics(cell: dict[str, Any], shards: list[Path]) -> dict[str, Any]:
    """Stream the shards through bench.metrics (weights from the asset folder, reference from the suite)."""
    from bench.metrics.assets import AssetFolder
    from bench.metrics.evaluate import EvalSettings, StreamingEvaluator
    from bench.metrics.reference import read_reference
    from bench.metrics.sources import iter_npz
    from bench.method import validate_model

    options = dict(cell.get("metrics_options", {}))
    resamples = int(options.pop("bootstrap", 10))     # FID bootstrap resamples (sampling noise); 0 = off
    settings = validate_model(EvalSettings, {**options, "metrics": cell["metrics"]}, prefix="metrics_options.")
    ref = cell.get("reference")
    if ref == "auto":
        from bench.references import ensure_reference
        ref = str(ensure_reference(cell["_suite_dir"], cell["dataset"], cell["run"]["data"], settings.extractor))
    if ref is None and any(m != "is" and m != "clip" for m in cell["metrics"]):
        raise _asset_error(f"dataset {cell['dataset']!r} has no 'reference' statistics file; make one with "
                           "`bench stats` and set datasets.<name>.reference")
    evaluator = StreamingEvaluator(settings, AssetFolder(), read_reference(ref) if ref else None)
    batches = (b for p in shards for b in iter_npz(p, settings.batch))
    from bench.metrics.bootstrap import run_with_bootstrap
    return run_with_bootstrap(evaluator, batches, resamples)


def _asset_error(msg: str) -> BaseException:
    try:
        from bench.metrics.assets import AssetError
        return AssetError(msg)
    except ImportError:
        return ImportError(msg)
