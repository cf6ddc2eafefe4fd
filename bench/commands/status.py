"""`bench status <suite>` and `bench cancel <suite>`: state from the run folders and the scheduler."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="stage, progress, job ids and failure reasons of a suite's cells")
    p.add_argument("suite", help="suite YAML file or its results folder")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG of every cell's training-loss curve")
    p.set_defaults(func=status)
    c = sub.add_parser("cancel", help="cancel a suite's queued and running SLURM jobs")
    c.add_argument("suite", help="suite YAML file or its results folder")
    c.set_defaults(func=cancel)


def resolve_root(ref: str) -> Path:
    from bench.suite import load_suite, suite_dir

    p = Path(ref)
    if p.is_dir():
        return p
    if p.is_file():
        return suite_dir(load_suite(p))
    if Path("results", ref).is_dir():
        return Path("results", ref)
    raise FileNotFoundError(f"{ref!r} is neither a suite file nor a results folder")


def job_ids(rf) -> dict[str, list[str]]:
    jobs = rf.read_manifest().get("parts", {}).get("driver", {}).get("jobs", {})
    return {"train": [jobs["train"]] if jobs.get("train") else [], "sample": list(jobs.get("sample") or []),
            "evaluate": [jobs["evaluate"]] if jobs.get("evaluate") else []}


def failure_line(rf, states: dict[str, dict[str, str]]) -> str | None:
    """The line that explains a failure: error.txt, else the last error line of the failed job's log."""
    line = rf.error_line()
    if line:
        return line
    bad = {j: s for j, s in states.items() if s["state"].split()[0] in ("FAILED", "TIMEOUT", "CANCELLED",
                                                                        "OUT_OF_MEMORY", "NODE_FAIL")}
    for jid, s in bad.items():
        for log in sorted(rf.path.glob(f"slurm/*/{jid}/*_log.err")) + sorted(rf.path.glob(f"slurm/*/{jid}_*/*.err")):
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            hits = [x for x in lines if "Error" in x or "error:" in x or "DUE TO" in x]
            if hits or lines:
                return f"job {jid} {s['state']}: {(hits or lines)[-1].strip()}"
        return f"job {jid} {s['state']} ({s['reason']})"
    return None


def _job_text(jid: str, states: dict[str, dict[str, str]]) -> str:
    return f"{jid}:{states[jid]['state']}" if jid in states else jid


def status(args: argparse.Namespace) -> int:
    from bench.launch import scheduler_states
    from bench.progress import cell_progress, format_eta, plot_loss_curves
    from bench.store import cell_folders

    root = resolve_root(args.suite)
    folders = cell_folders(root)
    if not folders:
        print(f"no cells under {root}")
        return 1
    all_ids = [j for rf in folders for ids in job_ids(rf).values() for j in ids]
    states = scheduler_states(all_ids)
    counts: dict[str, int] = {}
    for rf in folders:
        st = rf.status()
        counts[st] = counts.get(st, 0) + 1
        cell = rf.read_cell()
        total = sum((cell.get("run") or {}).get("stage_images") or [0])
        done_img = rf.train_summary().get("images") or rf.last_log().get("images") or 0
        ids = job_ids(rf)
        jobs = " ".join(f"{k}=" + ",".join(_job_text(j, states) for j in v) for k, v in ids.items() if v)
        live = cell_progress(rf, total)
        if st == "training" and live["images"] is not None:
            done_img = live["images"]          # train_summary.json is the previous process's, if any
        prog = f"{done_img}/{total} img ({done_img / total:.0%})" if total else "-"
        watch = ""
        if live["loss"] is not None:
            watch = f"loss {live['loss']:.4g}"
        if st == "training" and live["img_per_s"]:
            watch += f"  {live['img_per_s']:.1f} img/s  train ETA {format_eta(live['eta_s'])}"
        print(f"{rf.path.name:<28} {st:<10} {prog:<24} {watch:<40} {jobs}".rstrip())
        if st == "failed" or any(states.get(j, {}).get("state", "").startswith(("FAILED", "TIMEOUT", "CANCELLED"))
                                 for v in ids.values() for j in v):
            sub = {j: states[j] for v in ids.values() for j in v if j in states}
            why = failure_line(rf, sub)
            if why:
                print(f"    reason: {why}")
    print("; ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if getattr(args, "plot", None):
        print(f"loss curves: {plot_loss_curves(folders, args.plot, title=f'{root.name}: training loss')}")
    return 0


def cancel(args: argparse.Namespace) -> int:
    from bench.launch import cancel_jobs
    from bench.store import cell_folders

    root = resolve_root(args.suite)
    n = 0
    for rf in cell_folders(root):
        ids = [j for v in job_ids(rf).values() for j in v]
        cancelled = cancel_jobs(ids) if ids else []
        if cancelled and rf.status() != "done":
            rf.fail("cancel", "cancelled by `bench cancel`; re-run the suite to resume")
        n += len(cancelled)
        if cancelled:
            print(f"{rf.path.name}: cancelled {', '.join(cancelled)}")
    print(f"cancelled {n} job(s)")
    return 0
