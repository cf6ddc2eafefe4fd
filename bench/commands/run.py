"""`bench run <suite.yaml>`: expand a suite into cells, plan matched compute, and run or submit them."""
from __future__ import annotations

import argparse
import time

from bench.commands import add_trust_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a suite (local) or submit it to SLURM; key=value overrides suite fields")
    p.add_argument("suite", help="suite YAML file, e.g. suites/demo.yaml")
    p.add_argument("--executor", choices=("local", "slurm"), default=None, help="default: the suite's executor")
    p.add_argument("--cluster", default=None, help="SLURM profile: a name in slurm/ or a YAML path")
    p.add_argument("--dry-run", action="store_true", help="print cells, budgets and jobs; run nothing")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every submitted job has ended")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    add_trust_checkpoint(p)   # cells resume, sample and evaluate from their checkpoints
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from bench.checkpoint import trust_checkpoints
    from bench.launch import plan_cells, preflight, run_local, run_slurm, slurm_available, wait_slurm
    from bench.method import ConfigError
    from bench.suite import expand_suite, load_profile, load_suite, suite_dir

    t0 = time.perf_counter()
    suite = load_suite(args.suite, args.overrides or None)
    executor = args.executor or suite.executor
    profile = None
    if executor == "slurm":
        ref = args.cluster or suite.cluster
        if not ref:
            raise ConfigError("executor slurm needs a cluster profile: --cluster slurm/<name>.yaml "
                              "(or 'cluster:' in the suite)")
        profile = load_profile(ref)
    root = suite_dir(suite)
    if not args.dry_run:
        prepare_datasets(suite)
    skipped: list[str] = []
    planned = plan_cells(expand_suite(suite, skipped), root)
    for line in skipped:
        print(line)
    limits = None
    if profile is not None and not args.dry_run:
        limits = preflight(profile)
    elif profile is not None and slurm_available():
        try:
            limits = preflight(profile)
        except ConfigError as err:       # a dry run on another cluster still shows the plan
            print(f"warning: {err}")
    print(format_plan(planned, executor, profile, limits))
    print(f"planned {len(planned)} cells in {time.perf_counter() - t0:.2f}s; run folders under {root}")
    if args.dry_run:
        return 0
    if executor == "local":
        with trust_checkpoints(args.trust_checkpoint):
            status = run_local(planned, suite.name)
        failed = [k for k, v in status.items() if v != "done"]
        if suite.baselines:
            from bench.baselines import run_baselines
            run_baselines(suite.baselines, planned, root)
    else:
        submitted = run_slurm(planned, suite.name, profile, trust=args.trust_checkpoint)
        failed = [k for k, v in submitted.items() if v == "failed"]
        if not args.wait:
            print(f"submitted; follow with `bench status {args.suite}`")
            return 1 if failed else 0
        wait_slurm(submitted)
        from bench.store import RunFolder
        failed = [pc.cell.id for pc in planned if RunFolder(pc.run_dir).status() != "done"]
    if not args.no_report:
        from bench.report import write_report
        paths = write_report(root, title=suite.name, published=suite.published, targets=suite.targets,
                             baseline=suite.baseline)
        print(paths["md"].read_text())
        print(f"report: {paths['report']}")
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)} (details: bench status {args.suite})")
    return 1 if failed else 0


def prepare_datasets(suite) -> None:
    """Datasets marked `prepare: true` are converted once into the zip format the cells train from."""
    from bench.data.prepare import prepare
    from bench.data.spec import DatasetSpec
    from bench.method import validate_model
    from bench.suite import prepared_path

    for name, ds in suite.datasets.items():
        out = prepared_path(suite, name)
        if ds.prepare and not out.is_file():
            t0 = time.perf_counter()
            manifest = prepare(validate_model(DatasetSpec, ds.spec(), prefix=f"datasets.{name}."), out,
                               workers=2, progress=True)
            print(f"prepared dataset {name}: {manifest.get('count')} images -> {out} "
                  f"({time.perf_counter() - t0:.1f}s)")


def tol(cell) -> float:
    return float(cell.budget.get("tolerance", 0.02))


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ranks(profile) -> int:
    """Training ranks of one cell: one per GPU of the profile's training job (1 locally)."""
    if profile is None:
        return 1
    return profile.train.nodes * max(1, profile.train.gpus_per_node)


def _throughput(profile, planned) -> tuple[float | None, str]:
    if profile is not None and profile.throughput_flops:
        return float(profile.throughput_flops), f"cluster profile {profile.name!r}"
    stated = {pc.cell.budget.get("throughput_flops") for pc in planned} - {None}
    if len(stated) == 1:
        return float(stated.pop()), "the suite's budget.throughput_flops"
    return None, ""


def format_plan(planned, executor: str, profile=None, limits=None) -> str:
    from bench.launch.cost import gib, gpu_hours, peak_memory

    ranks = _ranks(profile if executor == "slurm" else None)
    throughput, source = _throughput(profile if executor == "slurm" else None, planned)
    lines = [f"{'cell':<28} {'label':<28} {'dataset':<12} {'seed':>4} {'budget FLOPs':>12} "
             f"{'planned':>10} {'dev':>7}  {'GPU-h':>8} {'mem/rank':>8}  stages (images/steps @ FLOPs/example)"]
    total_h = 0.0
    for pc in planned:
        c, p = pc.cell, pc.plan
        dev = (p.planned_flops - p.budget_flops) / p.budget_flops if p.budget_flops and p.matched else None
        stages = "; ".join(f"{s.name}: {s.images}/{s.steps} @ {s.flops_per_example:.3g}" for s in p.stages)
        hours = gpu_hours(p.planned_flops, throughput)
        total_h += hours or 0.0
        mem = peak_memory(pc.costs, c.run.get("train", {}), ranks)
        lines.append(f"{c.id:<28} {c.label[:28]:<28} {c.dataset[:12]:<12} {c.seed:>4} "
                     f"{_e(p.budget_flops) if p.matched else 'images':>12} {_e(p.planned_flops):>10} "
                     f"{'-' if dev is None else f'{dev:+.2%}':>7}{'!' if dev is not None and abs(dev) > tol(c) else ' '}"
                     f" {'-' if hours is None else f'{hours:.4g}':>8} {gib(mem.total if mem else None):>8}"
                     f"  {stages}")
    lines.append("('!' = whole-batch rounding moves the plan off the budget by more than the tolerance)")
    if throughput is not None:
        lines.append(f"GPU-hours (training only) at {throughput:.3g} FLOP/s per GPU ({source}): "
                     f"{total_h:.4g} in total over {len(planned)} cells")
    else:
        lines.append("GPU-hours: no throughput stated; set throughput_flops (sustained FLOP/s per GPU) in the "
                     "cluster profile")
    worst = max((m for m in (peak_memory(pc.costs, pc.cell.run.get("train", {}), ranks) for pc in planned) if m),
                key=lambda m: m.total, default=None)
    if worst is not None:
        lines.append(f"mem/rank = weights + grads + Adam moments + EMA copies + tensors saved for backward "
                     f"(counted on the meta device, fp32) x per-rank micro-batch, at {ranks} rank(s) per cell; "
                     f"largest: stage {worst.stage!r}: weights {gib(worst.weights)}, grads {gib(worst.gradients)}, "
                     f"Adam {gib(worst.optimizer)}, EMA {gib(worst.ema)}"
                     + (f", all-reduce {gib(worst.allreduce)}" if worst.allreduce else "")
                     + f", activations {gib(worst.activations)} (micro-batch {worst.micro_batch}) = {gib(worst.total)}"
                     " (no CUDA context / allocator slack; bf16 autocast stores activations smaller)")
    if executor == "local":
        lines.append("jobs (local, in this process, cell after cell): train -> sample "
                     f"{planned[0].cell.sampling['shards'] if planned else 0} shard(s) -> evaluate")
    else:
        from bench.launch import executor_parameters
        lim = limits or {}
        for kind in ("train", "sample", "evaluate"):
            par = executor_parameters(profile, kind, lim)
            desc = ", ".join(f"{k.replace('slurm_', '')}={v}" for k, v in par.items()
                             if v not in (None, [], {}) and k not in ("slurm_setup",))
            lines.append(f"  {kind:<8} per cell: {desc}")
        shards = sum(pc.cell.sampling["shards"] for pc in planned)
        lines.append(f"jobs (slurm, profile {profile.name!r}): {len(planned)} checkpointable train jobs, "
                     f"{shards} sampling array tasks (afterok train), {len(planned)} evaluate jobs "
                     f"(afterok array) = {2 * len(planned) + shards} jobs"
                     + ("" if limits is not None else "; partition not checked (no sinfo here)"))
    return "\n".join(lines)
